"""mkdocs hook: the CLI reference page is generated from ``thaw.cli.parser()`` at every build, so it
cannot drift from the code. A page holding the marker line ``<!-- cli-reference -->`` gets, in its place,
one section per subcommand: its usage, and a table of its arguments (flags, help with the default,
choices), in the parser's own order and argument groups."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # this checkout's thaw, not another


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    from thaw.cli import parser

    return markdown.replace(MARKER, cli_markdown(parser()))


def cli_markdown(p: argparse.ArgumentParser) -> str:
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    out = ["## thaw", "", _usage(p), "", p.description or "", "", *_tables(p)]
    for name, command in sub.choices.items():
        out += [f"## thaw {name}", "", helps.get(name, "") or "", "", _usage(command), "", *_tables(command)]
    return "\n".join(out)


def _usage(p: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(p.prog, width=100)
    formatter.add_usage(p.usage, p._actions, p._mutually_exclusive_groups)
    return "```text\n" + formatter.format_help().strip() + "\n```"


def _tables(p: argparse.ArgumentParser) -> list[str]:
    out = []
    for group in p._action_groups:
        rows = [_row(a) for a in group._group_actions if not isinstance(a, argparse._SubParsersAction)]
        rows = [r for r in rows if r]
        if not rows:
            continue
        title = {"positional arguments": "arguments", "optional arguments": "options"}.get(
            group.title, group.title
        )
        out += [f"**{title}**", "", "| argument | what |", "|---|---|", *rows, ""]
    return out


def _row(action: argparse.Action) -> str | None:
    if action.help == argparse.SUPPRESS:
        return None
    if action.option_strings:
        metavar = "" if action.nargs == 0 else " " + _metavar(action)
        name = ", ".join(f"`{o}{metavar}`" for o in action.option_strings)
    else:
        name = f"`{_metavar(action)}`"
    text = (action.help or "").replace("%%", "%")
    if "%(" in (action.help or ""):
        text = action.help % {**vars(action), "prog": ""}
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        text += " Choices: " + ", ".join(f"`{c}`" for c in action.choices) + "."
    return f"| {name} | {_cell(text)} |"


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")
