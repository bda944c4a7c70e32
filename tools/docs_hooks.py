"""MkDocs hooks (mkdocs.yml ``hooks:``): pages generated from the code, so they cannot drift.

``<!-- generated: cli-reference -->`` in a page becomes the reference of the ``appdb`` command,
read from its argparse parser (``appdb.cli.build_parser``): every command, argument, default and
choice, and the exit codes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

MARKER = "<!-- generated: cli-reference -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().split())[len("usage: "):]


def _arguments(parser: argparse.ArgumentParser, shared: set[str]) -> list[str]:
    rows = []
    for action in parser._actions:  # argparse has no public listing of a parser's arguments
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.dest in shared and action.option_strings:
            continue
        if action.option_strings:
            name = ", ".join(f"`{o}`" for o in action.option_strings)
            if action.nargs != 0:
                name += f" `{action.metavar or action.dest.upper()}`"
        else:
            name = f"`{action.metavar or action.dest}`"
            if action.nargs == "?":
                name += " (optional)"
        notes = [action.help or ""]
        if action.choices:
            notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
        if action.required and action.option_strings:
            notes.append("required")
        default = action.default
        if (
            default not in (None, False, argparse.SUPPRESS)
            and action.nargs != 0
            and "default" not in (action.help or "")
        ):
            notes.append(f"default `{default}`")
        rows.append(f"| {name} | {_cell('; '.join(n for n in notes if n))} |")
    if not rows:
        return ["No arguments of its own."]
    return ["| argument | meaning |", "|---|---|", *rows]


def cli_reference() -> str:
    """The Markdown reference of the ``appdb`` command."""
    from appdb import cli

    parser = cli.build_parser()
    commands: Any = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    shared = {"db", "migrations", "json"}
    out = [
        f"`{_usage(parser)}`",
        "",
        parser.description or "",
        "",
        "### Options every command takes",
        "",
        "They can come before or after the command's name.",
        "",
        "| option | meaning |",
        "|---|---|",
    ]
    for action in parser._actions:
        if action.dest in shared:
            out.append(f"| `{action.option_strings[0]}` | {_cell(action.help or '')} |")
    out += [
        "| `--version` | print the version and exit |",
        "",
        "### Exit codes",
        "",
        "| code | meaning |",
        "|---|---|",
        f"| {cli.EXIT_OK} | success |",
        f"| {cli.EXIT_FAILURE} | the command failed: an error (with `--json`, its message is in"
        " `error`), a migration that failed; `status`: an applied migration's file changed;"
        " `validate`: any problem; `verify`: a migration that is not reversible; `health`: the"
        " database is not healthy |",
        f"| {cli.EXIT_USAGE} | bad arguments (argparse's message on stderr) |",
        f"| {cli.EXIT_APPROVAL} | a destructive migration waits for `--allow-destructive` |",
        "",
        "### Commands",
        "",
    ]
    for name, sub in commands.choices.items():
        help_text = next((c.help for c in commands._choices_actions if c.dest == name), "")
        out += [f"#### `appdb {name}`", "", f"{help_text}.", "", f"`{_usage(sub)}`", ""]
        out += _arguments(sub, shared)
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Fill in the generated sections of a page."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown
