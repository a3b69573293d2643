"""What several commands share: the config flags generated from ``core/config.py`` (each command picks the
settings it consumes), ``--log-format``, and two printing helpers. Torch-free: ``thaw --help`` imports it."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import sys

from thaw.core.config import RunConfig, apply_settings, flag_names, float_or_auto, settings
from thaw.core.run_log import LOG_FORMATS

NONE = object()  # an optional setting (``int | None``) given as ``none`` on the command line


def keys(*patterns: str, drop: tuple[str, ...] = ()) -> frozenset[str]:
    """The dotted keys of the settings that match any of ``patterns`` (``data.*``, ``seed``; ``training.*``:
    the top-level ones), less those matching ``drop``: what a command consumes, so the flags it shows."""

    def match(section: str, key: str, among: tuple[str, ...]) -> bool:
        names = (key, f"training.{key}") if section == "training" else (key,)
        return any(fnmatch.fnmatchcase(n, p) for n in names for p in among)

    every = [(section, key) for section, key, _, _ in settings(RunConfig())]
    return frozenset(k for s, k in every if match(s, k, patterns) and not match(s, k, drop))


ALL = keys("*")
SPLIT = keys("data.format", "data.val_fraction", "data.test_fraction", "data.split_file", "data.split_seed")
"""Finding the images and the split thaw makes of them (``thaw_data.discover``)."""
FEATURES = SPLIT | keys(
    "data.batch_size", "data.image_size", "data.num_workers", "model.*", drop=("model.dropout",)
)
"""The frozen backbone's features of those images (no augmentation, no head, no training)."""


def config_flags(p: argparse.ArgumentParser, consumed: frozenset[str] = ALL) -> None:
    """One flag per config field in ``consumed``, generated from the dataclasses: name, help, choices and
    the default shown come from ``config.py``, so no setting is reachable only from YAML. ``--phase1-*``
    and ``--phase2-*`` set each phase; ``--patience`` sets both."""
    defaults = RunConfig()
    for section, key, f, default in settings(defaults):
        # the names are core.config's, which thaw.fit's keywords share (flag_names, keywords)
        flags = flag_names(section, f)  # none: the data path, --plans FILE, what thaw records
        if not flags or key not in consumed:
            continue
        group = _group(p, section, defaults)
        help_text = f"{f.metadata.get('help', '')} (default: {_show(default)})"
        kind = str(f.type).removesuffix("| None").strip()
        if kind == "bool":
            group.add_argument(*flags, dest=key, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        parse = {"int": int, "float": float, "float | str": float_or_auto}.get(kind, str)
        group.add_argument(
            *flags,
            dest=key,
            type=_optional(parse) if str(f.type).endswith("| None") else parse,
            choices=f.metadata.get("choices") or None,
            metavar=None
            if f.metadata.get("choices")
            else {"str": "TEXT", "float | str": "FLOAT|auto"}.get(kind, kind.upper()),
            help=help_text,
        )
    if "data.augment" in consumed:
        _group(p, "data", defaults).add_argument(
            "--no-augment", dest="data.augment", action="store_const", const="none", help="--augment none"
        )
    if {"phase1.patience", "phase2.patience"} <= consumed:
        _group(p, "training", defaults).add_argument(
            "--patience", type=int, metavar="INT", help="early-stopping patience of both phases (sets both)"
        )


def _group(p: argparse.ArgumentParser, title: str, defaults: RunConfig):
    groups = {g.title: g for g in p._action_groups}
    if title in groups:
        return groups[title]
    section = next((f for f in dataclasses.fields(defaults) if f.name == title), None)
    return p.add_argument_group(title, section.metadata.get("help") if section else None)


def _show(value) -> str:
    return "none" if value is None else str(value)


def _optional(parse):
    def convert(text: str):
        return NONE if text.lower() == "none" else parse(text)

    convert.__name__ = parse.__name__
    return convert


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """``base`` (defaults or a --config file) with every flag the user gave applied."""
    base = RunConfig() if base is None else base
    changes = {}
    for _, key, _, _ in settings(base):
        value = getattr(args, key, None)
        if value is not None:
            changes[key] = None if value is NONE else value
    if getattr(args, "patience", None) is not None:
        changes["patience"] = args.patience  # both phases (core.config.apply_settings)
    if getattr(args, "data", None):
        changes["data.path"] = args.data
    return apply_settings(base, changes)


def log_format_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text: lines for people (default); json: one JSON object per event on stdout, for scripts "
        "(each with an event field and a UTC time; nothing else on stdout, no progress bar)",
    )


def warn(text: str) -> None:
    print(f"warning: {readable(text)}", file=sys.stderr)


MAX_LINE = 600  # characters of one error or warning line: a value a file gave (10^6 class names) is cut


def readable(text: str) -> str:
    """``text`` on one line and at most ``MAX_LINE`` characters, saying how much was cut."""
    text = " ".join(str(text).split())
    if len(text) <= MAX_LINE:
        return text
    return f"{text[: MAX_LINE - 40]} ... ({len(text) - MAX_LINE + 40} more characters)"


def print_lines(lines: list[str]) -> None:
    for line in lines:
        print(line)
