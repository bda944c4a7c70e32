"""Collects the code blocks of the README and the docs site and runs them (tests/test_docs.py).

The rules a page's author follows (docs/contributing-docs.md says the same for people):

- A page's blocks run in order, in one fresh temporary folder and one Python namespace.
- ``python`` runs as written; ``pycon`` (``>>>`` sessions) runs through doctest, output compared.
- ``console`` is a shell transcript: each ``$ command`` runs with bash in the page's folder and its
  output must match the lines below it (``...`` matches anything, runs of spaces compare equal).
  Every command must exit 0: show a failure with ``|| echo "exit code $?"``.
- ``bash``/``sh`` run with ``bash -e``; their output is not compared.
- A fence with ``title="path"`` is a file: it is written to that path in the page's folder, not
  run (a migration, a config file), so the blocks after it can use it.
- ``<!-- docs-test: skip REASON -->`` on the line before a fence skips it; the reason is required.
- Other languages (``toml``, ``sql``, ``text``, ...) are shown, not run; an unknown language fails,
  so that every new kind of block gets a decision.
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = {"python", "pycon", "console", "bash", "sh"}
SHOWN = {"text", "toml", "sql", "ini", "json", "yaml", "js", "javascript", "ts", "typescript", "diff", "cfg"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
_TITLE = re.compile(r"""title=(?:"([^"]*)"|'([^']*)'|(\S+))""")
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@dataclass
class Block:
    """One fenced code block of a Markdown page."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    title: str | None
    directive: str | None
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """The README and every Markdown page of the docs site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one page, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].strip()
        language = info.split()[0].lower() if info else ""
        title_match = _TITLE.search(info)
        title = next((g for g in title_match.groups() if g), None) if title_match else None
        before = lines[i - 1] if i else ""
        directive_match = _DIRECTIVE.match(before)
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            line = lines[j]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            j += 1
        else:
            raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: code block never closed")
        found.append(
            Block(path, i + 1, language, title, directive_match["body"] if directive_match else None,
                  "\n".join(body) + "\n")
        )
        i = j + 1
    return found


def check_block(block: Block) -> None:
    """Fail on blocks that break the rules above (before anything runs)."""
    if block.directive is not None:
        assert block.directive.startswith("skip ") and len(block.directive) > 10, (
            f"{block.where}: a docs-test directive must read 'skip <reason>', got {block.directive!r}"
        )
    if block.title is not None:
        target = Path(block.title)
        assert not target.is_absolute() and ".." not in target.parts, (
            f"{block.where}: title={block.title!r} must be a relative path inside the page's folder"
        )
        return
    assert block.language in RUN | SHOWN, (
        f"{block.where}: code block language {block.language!r} is neither run nor listed as shown-only "
        "(tests/docs_examples.py: RUN, SHOWN)"
    )


class Page:
    """Runs one page's blocks in a folder of its own."""

    def __init__(self, path: Path, folder: Path) -> None:
        self.path = path
        self.folder = folder
        self.namespace: dict[str, object] = {"__name__": "__docs__"}
        bindir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
                    "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "COLUMNS": "100",
                    "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        self.env.pop("PYTHONWARNINGS", None)

    def run(self, block: Block) -> None:
        if block.title is not None:
            target = self.folder / block.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text, encoding="utf-8")
        elif block.language == "python":
            self.python(block)
        elif block.language == "pycon":
            self.pycon(block)
        elif block.language == "console":
            self.console(block)
        elif block.language in ("bash", "sh"):
            self.shell(block.text, block)

    def python(self, block: Block) -> None:
        # Line numbers in tracebacks point at the page: the code is padded to its first line.
        code = compile("\n" * block.line + block.text, str(block.path), "exec")
        old = os.getcwd()
        os.chdir(self.folder)
        try:
            exec(code, self.namespace)
        finally:
            os.chdir(old)

    def pycon(self, block: Block) -> None:
        parser = doctest.DocTestParser()
        test = parser.get_doctest(block.text, self.namespace, block.where, str(block.path), block.line)
        test.globs = self.namespace  # DocTest copies the globals it is given: share the page's
        runner = doctest.DocTestRunner(optionflags=_FLAGS)
        report: list[str] = []
        old = os.getcwd()
        os.chdir(self.folder)
        try:
            result = runner.run(test, out=report.append, clear_globs=False)
        finally:
            os.chdir(old)
        assert result.failed == 0, f"{block.where}: pycon example failed\n" + "".join(report)

    def shell(self, script: str, block: Block) -> str:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.folder, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        )
        output = done.stdout  # stderr interleaved, in the order a terminal shows it
        assert done.returncode == 0, (
            f"{block.where}: exit code {done.returncode} from\n{script}\noutput:\n{output}"
        )
        return output

    def console(self, block: Block) -> None:
        checker = doctest.OutputChecker()
        for command, expected in transcript(block):
            got = self.shell(command, block)
            want = "".join(line + "\n" for line in expected)
            assert checker.check_output(want, got, _FLAGS), (
                f"{block.where}: $ {command}\nexpected:\n{want}got:\n{got}"
            )


def transcript(block: Block) -> list[tuple[str, list[str]]]:
    """The ``$ command`` lines of a console block with the output lines that follow each."""
    steps: list[tuple[str, list[str]]] = []
    pending: list[str] = []  # continuation lines of a command ending in a backslash
    for line in block.text.splitlines():
        if pending:
            pending.append(line)
            if not line.endswith("\\"):
                steps.append(("\n".join(pending), []))
                pending = []
        elif line.startswith("$ "):
            if line.endswith("\\"):
                pending = [line[2:]]
            else:
                steps.append((line[2:], []))
        else:
            assert steps, f"{block.where}: a console block starts with '$ command', got {line!r}"
            steps[-1][1].append(line)
    assert steps and not pending, f"{block.where}: a console block needs complete '$ command' lines"
    return steps


def relative_links(path: Path) -> list[tuple[int, str]]:
    """Relative link targets of a page (no scheme, no pure #anchor), with their line numbers."""
    found = []
    in_code = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            in_code = not in_code
        if in_code:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            found.append((number, target.split("#", 1)[0]))
    return found


__all__ = ["ROOT", "Block", "Page", "blocks", "check_block", "pages", "relative_links", "transcript"]
