"""YAML read from users' files (specs, language files, job configs), bounded.

`yaml.safe_load` runs no code, but an alias bomb ("billion laughs": nine anchors each repeating
the previous one ten times) expands a 1 kB file into 10^9 values as soon as anything walks it
(pydantic, `str()` of a label, an error message). The loader here measures the document's size
*with aliases expanded* on the composed node graph, where it costs one pass over the distinct
nodes, and refuses a document past `MAX_VALUES` before anything is constructed. Files past
`MAX_BYTES` are refused unread.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from copsd.errors import CopsdError

MAX_VALUES = 100_000  # the paper's grid is ~2,000 values; a bomb is millions
MAX_BYTES = 4 * 1024 * 1024


class YamlTooLarge(CopsdError):
    """A YAML document that expands past the bound (or a file past the size cap)."""


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Values in the document once every alias is expanded; stops counting past `limit`."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            raise yaml.YAMLError("an alias refers to a node that contains it (a recursive anchor)")
        total = 1
        if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
            active.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else [x for kv in node.value for x in kv]
            for child in children:
                total += size(child)
                if total > limit:
                    break
            active.discard(key)
        memo[key] = total
        return total

    return size(root)


class _BoundedLoader(yaml.SafeLoader):
    def compose_document(self):
        node = super().compose_document()
        if node is not None and _expanded_size(node, MAX_VALUES) > MAX_VALUES:
            raise YamlTooLarge(
                f"too many aliases: the document expands to more than {MAX_VALUES:,} values (an alias bomb?); "
                "write the values out, or use fewer anchors"
            )
        return node


def load_yaml(text: str, where: str) -> object:
    """`yaml.safe_load` of `text`, refusing alias bombs (YamlTooLarge naming `where`); YAML syntax
    errors propagate as `yaml.YAMLError` for the caller to phrase."""
    if len(text) > MAX_BYTES:
        raise YamlTooLarge(f"{where}: {len(text):,} characters; a YAML input is at most {MAX_BYTES:,}")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except YamlTooLarge as exc:
        raise YamlTooLarge(f"{where}: {exc}") from None


def read_text_capped(path: Path, where: str) -> str:
    """A user's YAML file's text, refusing one past MAX_BYTES before reading it."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise YamlTooLarge(f"{where}: {size:,} bytes; a YAML input is at most {MAX_BYTES:,}")
    return path.read_text(encoding="utf-8")
