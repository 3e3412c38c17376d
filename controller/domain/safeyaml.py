"""Safe YAML (and therefore JSON) loading for everything a client uploads.

Bundles carry ``dvc.yaml``, hyperparameters and arbitrary data files, so the
parser is an attack surface. :func:`load_yaml` is the only way the service
reads client YAML; it refuses, with :class:`~controller.domain.errors.InvalidInput`
and never a ``yaml`` exception:

* input over ``max_bytes``, bytes that are not UTF-8, more than one document;
* nesting deeper than ``max_depth`` -- counted through aliases too, because an
  alias to a deep node nests as deeply as the node itself;
* more than ``max_aliases`` alias uses, recursive aliases, and alias fan-out
  whose expansion would hold more nodes than the input has bytes ("billion
  laughs": a handful of aliases can describe an exponentially large tree that
  blows up whoever walks it later, even though PyYAML shares the objects);
* duplicate mapping keys (YAML says they are an error; PyYAML keeps the last);
* scalars that cannot be constructed (``2020-99-99``, ``0x_``, ``!!float abc``,
  ``!!bool abc``, ``!!timestamp xyz``) and integers of more than
  :data:`MAX_INT_DIGITS` digits, whose conversion Python refuses or makes slow.

Scalars resolve as in YAML 1.2 (``yes``/``on`` stay strings, ``1e3`` is a
float), because DVC reads ``dvc.yaml`` and params files with ruamel's YAML 1.2
safe loader and we must see the same values -- and the same foreach stage
names -- that DVC will. JSON-looking input is read with :mod:`json` first, as
PyYAML rejects the tab indentation that many JSON writers emit;
:func:`load_json` is the strict JSON-only reader (``repo_json``) with the same
rules. :func:`compose_yaml` gives the node tree (with source positions) of a
document, for editing it in place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable
from typing import TypeVar

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controller.domain.errors import InvalidInput

__all__ = ["MAX_INT_DIGITS", "compose_yaml", "dump_yaml", "load_json", "load_yaml"]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_T = TypeVar("_T")

# "\ud800" escapes are legal syntax in YAML and JSON but no text: nothing can encode
# them as UTF-8 (not the store, not git), so they are refused where they are read.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_MESSAGE = "an escape stands for a lone surrogate (\\ud800-\\udfff), which is not text"

MAX_INT_DIGITS = 1000
"""Longest integer literal (digits, any base) accepted: hyperparameters need far fewer,
and Python refuses ``int()``/``str()`` of decimal integers over 4,300 digits anyway."""

# What PyYAML's scalar constructors raise on text their resolver (or an explicit tag)
# sent them but that is no valid value: ``month must be in 1..12``, ``int('', 16)``,
# a ``KeyError`` for ``!!bool abc``, an ``AttributeError`` for ``!!timestamp xyz``.
_CONSTRUCTION_ERRORS = (
    ArithmeticError,
    AttributeError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
)

_KINDS = {
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a float",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:timestamp": "a date or timestamp",
}


class _Refused(Exception):
    """A limit or rule was broken; carries a message and an optional mark."""

    def __init__(self, message: str, mark: yaml.Mark | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


class _LimitedLoader(yaml.SafeLoader):
    """Pure-Python SafeLoader that enforces limits while composing nodes.

    Limits live on the instance (set by :func:`_load_with_limits`) so one class
    serves every call without shared state.
    """

    # Start from an empty table so only the YAML 1.2 resolvers below apply.
    yaml_implicit_resolvers = {}  # noqa: RUF012 -- PyYAML's per-class registry

    max_depth = 64
    max_aliases = 64
    max_nodes = 1_048_576

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        # Per composed node (by id; nodes stay alive for the whole parse):
        # how many nodes it expands to and how tall it is, aliases followed.
        self._size: dict[int, int] = {}
        self._height: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: object) -> Node:
        if self.check_event(AliasEvent):
            return self._compose_alias(parent, index)
        self._depth += 1
        if self._depth > self.max_depth:
            raise _Refused(f"nesting deeper than {self.max_depth} levels", self._next_mark())
        node = self._compose_base(parent, index)
        self._depth -= 1
        self._measure(node)
        return node

    def _compose_alias(self, parent: Node | None, index: object) -> Node:
        mark = self._next_mark()
        self._aliases += 1
        if self._aliases > self.max_aliases:
            raise _Refused(f"more than {self.max_aliases} aliases", mark)
        node = self._compose_base(parent, index)
        if id(node) not in self._height:
            # The anchored node is still being composed: the alias points
            # into its own ancestor, which would expand forever.
            raise _Refused("recursive alias", mark)
        if self._depth + self._height[id(node)] > self.max_depth:
            raise _Refused(f"nesting deeper than {self.max_depth} levels (through an alias)", mark)
        return node

    def _compose_base(self, parent: Node | None, index: object) -> Node:
        node = super().compose_node(parent, index)  # type: ignore[arg-type]
        if node is None:  # only at stream end, which get_single_node never asks for
            raise _Refused("unexpected end of input")
        return node

    def _next_mark(self) -> yaml.Mark:
        mark: yaml.Mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        return mark

    def _measure(self, node: Node) -> None:
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        size = 1 + sum(self._size[id(child)] for child in children)
        if size > self.max_nodes:
            raise _Refused(
                "aliases expand to more nodes than the input size limit allows", node.start_mark
            )
        self._size[id(node)] = size
        self._height[id(node)] = 1 + max((self._height[id(c)] for c in children), default=0)

    def construct_object(self, node: Node, deep: bool = False) -> object:
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCTION_ERRORS:
            # The value is not echoed: the location says where, the tag what was expected.
            kind = _KINDS.get(node.tag, f"a {node.tag.rsplit(':', 1)[-1]} value")
            raise _Refused(f"this value is not valid as {kind}", node.start_mark) from None

    def construct_scalar(self, node: ScalarNode | MappingNode) -> str:
        value = super().construct_scalar(node)
        if isinstance(value, str) and _SURROGATE.search(value):
            raise _Refused(_SURROGATE_MESSAGE, node.start_mark)
        return value

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, object]:
        self._refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicate_keys(self, node: MappingNode) -> None:
        seen: set[object] = set()
        for key_node, _ in node.value:
            # Merge keys (<<) may legitimately repeat and be overridden.
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise _Refused(f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        # YAML 1.2: 0o17 is octal, 010 is ten (PyYAML's 1.1 reads it as eight).
        text = str(self.construct_scalar(node)).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        bases = {"0b": 2, "0o": 8, "0x": 16}
        base = bases.get(digits[:2].lower(), 10)
        digits = digits[2:] if base != 10 else digits
        _check_int_digits(len(digits), node.start_mark)
        return sign * int(digits, base)


def _check_int_digits(count: int, mark: yaml.Mark | None = None) -> None:
    if count > MAX_INT_DIGITS:
        raise _Refused(
            f"an integer of {count} digits is over the limit of {MAX_INT_DIGITS} digits", mark
        )


# YAML 1.2 core-schema scalars, as ruamel (and so DVC) resolves them.
_YAML12_RESOLVERS: tuple[tuple[str, re.Pattern[str], list[str]], ...] = (
    (
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    ),
    (
        "tag:yaml.org,2002:int",
        re.compile(r"^[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)$"),
        list("-+0123456789"),
    ),
    (
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    ),
    (_MERGE_TAG, re.compile(r"^<<$"), ["<"]),
    ("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]),
    (
        "tag:yaml.org,2002:timestamp",
        re.compile(
            r"""^(?:[0-9]{4}-[0-9]{2}-[0-9]{2}
                |[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}
                 (?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)$""",
            re.X,
        ),
        list("0123456789"),
    ),
)
for _tag, _pattern, _first in _YAML12_RESOLVERS:
    _LimitedLoader.add_implicit_resolver(_tag, _pattern, _first)
_LimitedLoader.add_constructor("tag:yaml.org,2002:int", _LimitedLoader.construct_yaml_int)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes any string YAML 1.1 *or* 1.2 would read as another type.

    PyYAML only knows 1.1, so it would write the string ``"1e3"`` or ``"0o7"``
    bare, and DVC (YAML 1.2) would read a number back. Strings holding NEL, LS or
    PS are double-quoted, where they are escaped: 1.1 reads them raw as line breaks,
    1.2 as text, and PyYAML's single-quoted style folds them.
    """

    def represent_str(self, data: str) -> ScalarNode:
        if _BREAKS_1_1.search(data):
            return self.represent_scalar("tag:yaml.org,2002:str", data, style='"')
        return super().represent_str(data)


_BREAKS_1_1 = re.compile("[\x85\u2028\u2029]")
for _tag, _pattern, _first in _YAML12_RESOLVERS:
    _Dumper.add_implicit_resolver(_tag, _pattern, _first)
_Dumper.add_representer(str, _Dumper.represent_str)


def load_yaml(
    data: str | bytes,
    *,
    source: str,
    max_bytes: int = 1_048_576,
    max_depth: int = 64,
    max_aliases: int = 64,
    json_first: bool = True,
) -> object:
    """Parse one YAML or JSON document within the limits; an empty document is ``None``.

    ``source`` names the input in error messages (``"dvc.yaml"``, a file path).
    Every failure raises :class:`InvalidInput` whose message starts with it.
    ``json_first=False`` reads JSON-looking text as YAML too, as DVC would.
    """
    text = _decode(data, source=source, max_bytes=max_bytes)
    if json_first and text.lstrip().startswith(("{", "[")):
        parsed, ok = _try_json(text, source=source, max_depth=max_depth)
        if ok:
            return parsed
    return _load_with_limits(
        text,
        source=source,
        max_nodes=2 * max_bytes + 16,
        max_depth=max_depth,
        max_aliases=max_aliases,
    )


def dump_yaml(data: object) -> str:
    """Render plain data (dicts, lists, scalars) as block-style YAML, keys in given order."""
    try:
        return yaml.dump(
            data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
        )
    except yaml.YAMLError as exc:
        # Callers pass their own data; an unrepresentable object is a bug there.
        raise TypeError(f"cannot represent {type(data).__name__} data as YAML: {exc}") from exc


def _decode(data: str | bytes, *, source: str, max_bytes: int) -> str:
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"{source}: text is not valid Unicode ({exc.reason})") from exc
    else:
        raw = data
    if len(raw) > max_bytes:
        raise InvalidInput(f"{source}: {len(raw)} bytes is over the limit of {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{source}: not UTF-8 (bad byte at offset {exc.start})") from exc
    # A byte-order mark is legal in YAML and JSON but not part of the content.
    return text.removeprefix("\ufeff")


class _DuplicateJsonKey(Exception):
    pass


def _reject_duplicate_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateJsonKey(key)
        result[key] = value
    return result


def _json_int(text: str) -> int:
    _check_int_digits(len(text.lstrip("-")))
    return int(text)


def _parse_json(text: str, *, source: str, max_depth: int) -> object:
    """Strict JSON; syntax errors stay :class:`json.JSONDecodeError`, the rest is InvalidInput."""
    try:
        parsed: object = json.loads(
            text, object_pairs_hook=_reject_duplicate_pairs, parse_int=_json_int
        )
    except _DuplicateJsonKey as exc:
        raise InvalidInput(f"{source}: duplicate key {exc.args[0]!r}") from None
    except _Refused as exc:
        raise InvalidInput(f"{source}: {exc.message}") from None
    except RecursionError:
        raise InvalidInput(f"{source}: nesting deeper than {max_depth} levels") from None
    if _depth(parsed) > max_depth:
        raise InvalidInput(f"{source}: nesting deeper than {max_depth} levels")
    if _has_surrogate(parsed):
        raise InvalidInput(f"{source}: {_SURROGATE_MESSAGE}")
    return parsed


def _try_json(text: str, *, source: str, max_depth: int) -> tuple[object, bool]:
    """Parse strict JSON; ``(None, False)`` when the text is not JSON (YAML may still read it)."""
    try:
        return _parse_json(text, source=source, max_depth=max_depth), True
    except json.JSONDecodeError:
        return None, False


def load_json(
    data: str | bytes, *, source: str, max_bytes: int = 1_048_576, max_depth: int = 64
) -> object:
    """Parse one strict JSON document (UTF-8) within the limits of :func:`load_yaml`.

    Every failure raises :class:`InvalidInput` whose message starts with ``source``
    and never quotes a value of the input (``repo_json`` holds credentials).
    """
    text = _decode(data, source=source, max_bytes=max_bytes)
    try:
        return _parse_json(text, source=source, max_depth=max_depth)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON, iteratively so deep input cannot recurse."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def _has_surrogate(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def compose_yaml(
    data: str | bytes,
    *,
    source: str,
    max_bytes: int = 1_048_576,
    max_depth: int = 64,
    max_aliases: int = 64,
) -> Node | None:
    """The node tree of one YAML document (``None`` if empty), under :func:`load_yaml`'s
    limits; marks index into the text with any byte-order mark removed."""
    text = _decode(data, source=source, max_bytes=max_bytes)
    node: Node | None = _with_limits(
        text,
        lambda loader: loader.get_single_node(),
        source=source,
        max_nodes=2 * max_bytes + 16,
        max_depth=max_depth,
        max_aliases=max_aliases,
    )
    return node


def _load_with_limits(
    text: str, *, source: str, max_nodes: int, max_depth: int, max_aliases: int
) -> object:
    return _with_limits(
        text,
        lambda loader: loader.get_single_data(),
        source=source,
        max_nodes=max_nodes,
        max_depth=max_depth,
        max_aliases=max_aliases,
    )


def _with_limits(
    text: str,
    step: Callable[[_LimitedLoader], _T],
    *,
    source: str,
    max_nodes: int,
    max_depth: int,
    max_aliases: int,
) -> _T:
    try:
        loader = _LimitedLoader(text)
    except yaml.reader.ReaderError as exc:
        # The reader refuses control characters before any parsing starts.
        raise InvalidInput(
            f"{source}: character {exc.character:#06x} at offset {exc.position} is not allowed"
        ) from None
    loader.max_depth = max_depth
    loader.max_aliases = max_aliases
    loader.max_nodes = max_nodes
    try:
        return step(loader)
    except _Refused as exc:
        raise InvalidInput(_located(source, exc.message, exc.mark)) from None
    except yaml.MarkedYAMLError as exc:
        raise InvalidInput(_describe(source, exc)) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source}: {exc}") from None
    except RecursionError:
        raise InvalidInput(f"{source}: nesting too deep") from None
    except _CONSTRUCTION_ERRORS:
        # Construction errors are located in construct_object; this is the last net.
        raise InvalidInput(f"{source}: a value cannot be read") from None
    finally:
        loader.dispose()


def _describe(source: str, exc: yaml.MarkedYAMLError) -> str:
    if isinstance(exc, yaml.composer.ComposerError) and "single document" in str(exc.context):
        return _located(source, "more than one YAML document", exc.problem_mark)
    if isinstance(exc, ConstructorError) and exc.problem and "unhashable" in exc.problem:
        return _located(source, "a mapping key must be a scalar", exc.problem_mark)
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        problem = f"{exc.problem} ({exc.context})"
    return _located(source, problem, exc.problem_mark or exc.context_mark)


def _located(source: str, message: str, mark: yaml.Mark | None) -> str:
    if mark is None:
        return f"{source}: {message}"
    return f"{source}: line {mark.line + 1}, column {mark.column + 1}: {message}"
