"""Hyperparameters: the bundle's params file and a run's dotted-key overrides.

Params travel as JSON (the API, overrides, the record), so a params file is
accepted only if JSON can carry every value exactly: string keys; strings,
finite numbers, booleans, nulls, lists and mappings. ``.inf``/``.nan`` and dates
are refused at create rather than turned into something else.

The experiment commits the uploaded document itself as ``params.yaml`` (its
bytes, comments, key order and spelling of numbers); only JSON that YAML cannot
read (tab indentation) is written out again, as YAML of the same values.
A run's ``params.yaml`` is that document with each override written over the
value it replaces (:func:`render_params`); where an edit in place cannot be
shown to read back as exactly the overridden values (aliases, merge keys), the
values are written out whole instead. Neither is ever rebuilt from a lossy copy.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import cast

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controller.domain.errors import InvalidBundle, InvalidInput, InvalidParams
from controller.domain.models import JsonValue
from controller.domain.safeyaml import MAX_INT_DIGITS, compose_yaml, dump_yaml, load_yaml

MAX_OVERRIDES = 200

_MERGE_TAG = "tag:yaml.org,2002:merge"
_SOURCE = "hyperparams_file"
_INT_LIMIT = 10**MAX_INT_DIGITS
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_TEXT = "holds a lone surrogate (\\ud800-\\udfff), which is not text"


@dataclass(frozen=True)
class ParamsFile:
    """A params file that passed: its values, and the text to commit as ``params.yaml``."""

    values: dict[str, JsonValue]
    document: str


def parse_params(data: bytes, *, max_bytes: int) -> ParamsFile:
    """Read the uploaded hyperparameters (YAML or JSON); every failure is InvalidBundle."""
    try:
        parsed = load_yaml(data, source=_SOURCE, max_bytes=max_bytes)
    except InvalidInput as exc:
        raise InvalidBundle(exc.detail) from None
    if parsed is None:
        parsed = {}
    if not isinstance(parsed, dict):
        raise InvalidBundle(f"{_SOURCE} must hold a mapping of parameters")
    problem = json_problem(parsed, "params")
    if problem is not None:
        raise InvalidBundle(f"{_SOURCE}: {problem}")
    document = data.decode("utf-8")  # load_yaml has checked it is UTF-8
    if not _reads_as_yaml(document, parsed, max_bytes=max_bytes):
        document = dump_yaml(parsed)
    return ParamsFile(values=cast("dict[str, JsonValue]", parsed), document=document)


def json_problem(value: object, where: str) -> str | None:
    """Why JSON cannot carry ``value`` exactly, naming the dotted place; ``None`` if it can."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"key {key!r} in {where} is not a string"
            if _SURROGATE.search(key):
                return f"a key in {where} {_NOT_TEXT}"
            problem = json_problem(item, f"{where}.{key}")
            if problem is not None:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = json_problem(item, f"{where}.{index}")
            if problem is not None:
                return problem
    elif isinstance(value, float):
        if not math.isfinite(value):
            name = "NaN" if math.isnan(value) else ("-" if value < 0 else "") + "infinity"
            return (
                f"{where} is {name}; JSON cannot carry infinity or NaN, so the value would "
                "not survive (use a finite number, or a string)"
            )
    elif isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= _INT_LIMIT:
            return f"{where} is an integer over the limit of {MAX_INT_DIGITS} digits"
    elif isinstance(value, str):
        if _SURROGATE.search(value):
            return f"{where} {_NOT_TEXT}"
    elif not (value is None or isinstance(value, bool)):
        return (
            f"{where} is a {type(value).__name__}; use a string, number, boolean, list or mapping"
        )
    return None


def apply_overrides(
    params: Mapping[str, object], overrides: Mapping[str, object]
) -> dict[str, object]:
    """Return a copy of ``params`` with each ``"a.b.c": value`` override applied.

    A key must name an existing leaf or mapping entry: a typo that silently
    added a new key would leave the pipeline running with the old value.
    List items are addressed by index (``layers.0``).
    """
    if len(overrides) > MAX_OVERRIDES:
        raise InvalidParams(f"at most {MAX_OVERRIDES} parameter overrides are accepted")
    result: dict[str, object] = copy.deepcopy(dict(params))
    for dotted, value in overrides.items():
        problem = json_problem(value, f"params.{dotted}")
        if problem is not None:
            raise InvalidParams(problem)
        _set(result, dotted, value)
    return result


def render_params(document: str, overrides: Mapping[str, object]) -> str:
    """``params.yaml`` for a run: ``document`` (as committed) with ``overrides`` applied.

    Each override replaces the text of the value it names, so comments, key order
    and every other value stay exactly as uploaded. The result is read back and
    must equal the overridden values; if it does not (an alias shared the edited
    node, a merge key supplied it), the overridden values are dumped instead.
    """
    if not overrides:
        return document
    size = max(len(document.encode()), 1)
    values = load_yaml(document, source="params.yaml", max_bytes=size, json_first=False)
    expected = apply_overrides(values if isinstance(values, dict) else {}, overrides)
    edited = _edit_in_place(document, overrides, max_bytes=size)
    if edited is not None and _identical(edited, expected):
        return edited
    return dump_yaml(expected)


def _reads_as_yaml(document: str, values: object, *, max_bytes: int) -> bool:
    """True if DVC, reading ``document`` as YAML, gets exactly ``values``."""
    try:
        as_yaml = load_yaml(document, source=_SOURCE, max_bytes=max_bytes, json_first=False)
    except InvalidInput:
        return False
    return _same(as_yaml or {}, values)


def _identical(document: str, expected: object) -> bool:
    try:
        values = load_yaml(
            document, source="params.yaml", max_bytes=len(document.encode()) + 1, json_first=False
        )
    except InvalidInput:
        return False
    return _same(values, expected)


def _same(a: object, b: object) -> bool:
    """Equal values of equal types in equal key order (``1``, ``1.0`` and ``true`` differ)."""
    try:
        # ensure_ascii=False: "\ud800\udc00" escapes would make a pair and a character look alike.
        return json.dumps(a, allow_nan=False, ensure_ascii=False) == json.dumps(
            b, allow_nan=False, ensure_ascii=False
        )
    except (TypeError, ValueError):
        return False


def _edit_in_place(document: str, overrides: Mapping[str, object], *, max_bytes: int) -> str | None:
    text = document.removeprefix("\ufeff")
    bom = document[: len(document) - len(text)]
    try:
        root = compose_yaml(text, source="params.yaml", max_bytes=max_bytes)
    except InvalidInput:
        return None
    edits: list[tuple[int, int, str]] = []
    for dotted, value in overrides.items():
        edit = _edit_for(root, dotted.split("."), value, text)
        if edit is None:
            return None
        edits.append(edit)
    edits.sort()
    if any(first[1] > second[0] for first, second in pairwise(edits)):
        return None  # one override inside another ("train" and "train.C")
    for start, end, replacement in reversed(edits):
        text = text[:start] + replacement + text[end:]
    return bom + text


def _edit_for(
    root: Node | None, parts: list[str], value: object, text: str
) -> tuple[int, int, str] | None:
    """(start, end, replacement) of the text of the node at ``parts``, or None."""
    node = root
    key: Node | None = None
    for part in parts:
        if isinstance(node, MappingNode):
            if any(k.tag == _MERGE_TAG for k, _ in node.value):
                return None
            matches = [
                (k, v) for k, v in node.value if isinstance(k, ScalarNode) and k.value == part
            ]
            if len(matches) != 1:
                return None
            key, node = matches[0]
        elif isinstance(node, SequenceNode):
            if not part.isdigit() or int(part) >= len(node.value):
                return None
            key, node = None, node.value[int(part)]
        else:
            return None
    if node is None:
        return None
    start, end = node.start_mark.index, _content_end(node)
    replacement = _flow(value)
    block = isinstance(node, MappingNode | SequenceNode) and not node.flow_style
    if block and key is not None and node.start_mark.column <= key.start_mark.column:
        # A sequence at its key's indentation ("layers:\n- 1"): a flow node there would
        # not be the key's value, so write it after the key.
        start, replacement = key.end_mark.index, f": {replacement}"
    if not 0 <= start < end <= len(text):
        return None  # an alias: its marks are those of the anchored node elsewhere
    original = text[start:end]
    # A block scalar's span ends with its line breaks; keep them.
    return start, end, replacement + original[len(original.rstrip()) :]


def _flow(value: object) -> str:
    """``value`` as JSON, which is a YAML flow node; inside strings, characters YAML
    reads differently (NEL, LS, PS), refuses (C1 controls) or cannot take raw are
    escaped (JSON's syntax itself is printable ASCII, so only string contents change)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return _NOT_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_NOT_RAW = re.compile("[^\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _content_end(node: Node) -> int:
    """Where the node's own text ends: a block collection's span would run on over the
    comments and blank lines that follow it, up to the next token."""
    while isinstance(node, MappingNode | SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, MappingNode) else last
    return int(node.end_mark.index)


def _set(root: dict[str, object], dotted: str, value: object) -> None:
    parts = dotted.split(".")
    if not dotted or any(not part for part in parts):
        raise InvalidParams(f"params: {dotted!r} is not a dotted key such as 'train.C'")
    node: object = root
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        path = ".".join(parts[: depth + 1])
        if isinstance(node, dict):
            if part not in node:
                known = ", ".join(sorted(str(k) for k in node)[:20]) or "none"
                raise InvalidParams(f"params: {path!r} is not in params.yaml (known here: {known})")
            if last:
                node[part] = value
            else:
                node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InvalidParams(f"params: {path!r} is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            raise InvalidParams(f"params: {path!r} goes inside a value that is not a mapping")
