"""Every example in the README and the docs site runs as written (rules: tests/docs_examples.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from docs_examples import ROOT, Page, blocks, check_block, pages, relative_links

PAGES = pages()


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(path: Path, tmp_path: Path) -> None:
    found = blocks(path)
    for block in found:
        check_block(block)
    page = Page(path, tmp_path)
    for block in found:
        if block.directive is None:
            page.run(block)


@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(path: Path) -> None:
    missing = [
        f"{path.relative_to(ROOT)}:{line}: {target}"
        for line, target in relative_links(path)
        if target and not (path.parent / target).exists()
    ]
    assert not missing, "links to files that do not exist:\n" + "\n".join(missing)


def test_readme_opens_with_what_and_the_two_commands() -> None:
    """The README says what appdb is, then its first shell block sets everything up."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    intro = text.split("```", 1)[0]
    assert "SQLite" in intro and "Python" in intro
    first = next(b for b in blocks(ROOT / "README.md") if b.language in ("bash", "sh", "console"))
    assert "benchmarks/run.py" in first.text and "pytest" in first.text
