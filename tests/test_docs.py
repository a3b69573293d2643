"""The documentation site: every page is in the nav, and the CLI reference, generated from the parser
by the mkdocs hook, lists every subcommand and every flag (so it cannot drift). `make docs` builds the
site with `mkdocs build --strict`; these checks need no mkdocs."""

import argparse
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_lists_every_command_and_flag():
    from thaw.cli import parser

    p = parser()
    hook = _hook()
    page = hook.on_page_markdown(f"# CLI\n\n{hook.MARKER}\n", None, None, None)
    assert hook.MARKER not in page
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"## thaw {name}\n" in page
        section = page.split(f"## thaw {name}\n")[1].split("\n## thaw ")[0]
        for action in command._actions:  # a hidden flag (export's old --format) is left out
            for flag in action.option_strings if action.help != argparse.SUPPRESS else ():
                assert f"`{flag}" in section, f"thaw {name} {flag} is missing from the CLI reference"
    assert "`cosine`" in page  # choices are listed
    assert "(default: 10)" in page  # and defaults, from the config dataclasses' help


def test_every_page_is_in_the_nav_and_the_cli_page_has_the_marker():
    config = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == set(re.findall(r":\s+([\w/-]+\.md)\s*$", config, re.M))
    assert _hook().MARKER in (DOCS / "reference" / "cli.md").read_text()
