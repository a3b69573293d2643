"""The one YAML reader for what a user hands thaw (``config.yaml``, ``--plans``, a run's own files): bounded
before anything is built, and one set of rules for numbers.

- A document over ``MAX_BYTES`` is refused before it is parsed.
- Aliases (``*name``, ``<<: *name``) are counted while the document is composed: more than ``MAX_ALIASES``,
  a node that contains itself, or a document that would expand to more than ``MAX_NODES`` nodes (the
  "billion laughs": a few aliases of aliases) is refused before any Python object is built from it.
- A key given twice in one mapping is refused (PyYAML keeps the last silently).
- ``1e-3`` is a number, as in YAML 1.2 and JSON (PyYAML follows YAML 1.1, where a float needs a dot, so
  ``lr: 1e-3`` arrived as the string ``"1e-3"``): config.yaml and ``--plans`` read numbers the same way.

Hand-written on PyYAML's own hooks (``compose_node``, ``compose_document``): PyYAML has no limit on
aliases, and ruamel.yaml's are not exposed either.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from thaw.core.errors import ThawError

MAX_BYTES = 1 << 20  # 1 MiB: a config or a list of plans is a few KiB
MAX_ALIASES = 64
MAX_NODES = 100_000  # scalars, lists and mappings once every alias is expanded

_FLOAT_12 = re.compile(  # YAML 1.2's core-schema floats, which YAML 1.1 reads as strings (1e-3, 2E5)
    r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"
)


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader``, bounded (aliases, expanded size), with unique keys and YAML 1.2 exponents."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"more than {MAX_ALIASES} aliases (*name); write the values out",
                    self.peek_event().start_mark,
                )
        return super().compose_node(parent, index)

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool | None):
                continue  # left to the mapping's own checks
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))


def _expanded_size(root) -> int:
    """The number of nodes ``root`` stands for with every alias written out (memoised per node, so the
    walk is as long as the document); refused past ``MAX_NODES`` or where a node contains itself."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to the node that contains it", node.start_mark
            )
        busy.add(key)
        children = node.value if isinstance(node.value, list) else []
        total = 1
        for child in children:
            total += sum(size(n) for n in child) if isinstance(child, tuple) else size(child)
            if total > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"its aliases expand to more than {MAX_NODES} values; write the values out",
                    node.start_mark,
                )
        busy.discard(key)
        sizes[key] = total
        return total

    return size(root)


def load(text: str, where: str) -> Any:
    """The YAML document ``text`` (named ``where`` in errors) as Python data; a :class:`ThawError` of one
    line for anything too large, too aliased or not YAML."""
    if len(text) > MAX_BYTES:
        raise _too_big(where, len(text))
    try:
        return yaml.load(text, Loader=BoundedLoader)
    except yaml.YAMLError as err:
        raise ThawError(f"{where} is not valid YAML{where_in(err)}") from None
    except RecursionError:
        raise ThawError(f"{where} is nested too deeply to read; flatten it") from None


def load_file(path: str | Path, where: str | None = None) -> Any:
    """:func:`load` of a file; the size is checked before the file is read."""
    path = Path(path)
    where = where or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise _too_big(where, size)
        text = path.read_text()
    except UnicodeDecodeError:
        raise ThawError(f"{where} is not text (UTF-8); give a YAML file") from None
    return load(text, where)


def _too_big(where: str, size: int) -> ThawError:
    return ThawError(
        f"{where} is {size / 2**20:.1f} MiB, over thaw's cap of {MAX_BYTES >> 20} MiB for a YAML file; a "
        f"config or a list of plans is a few KiB: check the file"
    )


def where_in(err: yaml.YAMLError) -> str:
    """`` at line L, column C: problem`` of a YAML error, on one line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{place}: {' '.join(str(problem).split())}"
