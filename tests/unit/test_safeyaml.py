"""safeyaml: YAML 1.2 scalars like DVC, JSON, and every limit refused as InvalidInput."""

from __future__ import annotations

import datetime
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.domain.errors import InvalidInput
from controller.domain.safeyaml import dump_yaml, load_yaml


def load(text: str | bytes, **limits: int) -> object:
    return load_yaml(text, source="in.yaml", **limits)


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        ("yes", "yes"),  # YAML 1.1 would say True; DVC (1.2) says "yes"
        ("on", "on"),
        ("true", True),
        ("False", False),
        ("1e3", 1000.0),
        ("1.5", 1.5),
        (".5", 0.5),
        ("010", 10),  # 1.1 would read octal 8
        ("0o17", 15),
        ("0x1F", 31),
        ("-0b11", -3),
        ("1_000", 1000),
        ("~", None),
        ("null", None),
        ("", None),
        ("1:30", "1:30"),  # no sexagesimal in 1.2
        ("2024-01-01", datetime.date(2024, 1, 1)),
        ("0.1.2", "0.1.2"),
    ],
)
def test_scalars_resolve_as_yaml_1_2(scalar: str, expected: object) -> None:
    assert load(f"a: {scalar}\n") == {"a": expected}


def test_infinity_and_nan_are_floats() -> None:
    parsed = load("a: .inf\nb: -.Inf\nc: .nan\n")
    assert isinstance(parsed, dict)
    assert parsed["a"] == math.inf
    assert parsed["b"] == -math.inf
    assert math.isnan(parsed["c"])


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n", b""])
def test_empty_document_is_none(text: str | bytes) -> None:
    assert load(text) is None


def test_json_with_tab_indentation_is_read() -> None:
    assert load('{\n\t"a": [1,\n\t\t2],\n\t"b": {"c": null}\n}') == {"a": [1, 2], "b": {"c": None}}


def test_flow_yaml_that_is_not_json_still_parses() -> None:
    assert load("{a: 1, b: [x, y]}") == {"a": 1, "b": ["x", "y"]}


def test_byte_order_mark_is_ignored() -> None:
    assert load("\ufeffa: 1\n".encode()) == {"a": 1}


def test_merge_keys_are_not_duplicates() -> None:
    text = "base: &b {x: 1, y: 1}\nd:\n  <<: *b\n  y: 2\n"
    assert load(text) == {"base": {"x": 1, "y": 1}, "d": {"x": 1, "y": 2}}


def test_integer_keys_stay_integers() -> None:
    assert load("1: a\n2: b\n") == {1: "a", 2: "b"}


def test_few_aliases_are_fine() -> None:
    assert load("a: &x [1, 2]\nb: *x\nc: *x\n") == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}


def nested_mapping(levels: int) -> str:
    """``levels`` nested mappings with a scalar at the bottom: depth levels + 1."""
    return "".join("  " * i + "k:\n" for i in range(levels - 1)) + "  " * (levels - 1) + "k: v\n"


def test_depth_at_the_limit_is_accepted() -> None:
    assert load(nested_mapping(63), max_depth=64) is not None


@pytest.mark.parametrize(
    ("text", "limits", "fragment"),
    [
        ("a: 1\na: 2\n", {}, "line 2, column 1: duplicate key 'a'"),
        ('{"a": 1, "a": 2}', {}, "duplicate key 'a'"),
        ("a: 1\n---\nb: 2\n", {}, "line 2, column 1: more than one YAML document"),
        ("a: [1\n", {}, "line 2"),
        ("a: b: c\n", {}, "line 1"),
        (nested_mapping(64), {"max_depth": 64}, "nesting deeper than 64"),
        ("[" * 65 + "]" * 65, {"max_depth": 64}, "nesting deeper than 64"),
        ("a: &a [*a]\n", {}, "recursive alias"),
        ("a: &x 1\n" + "".join(f"b{i}: *x\n" for i in range(5)), {"max_aliases": 4}, "aliases"),
        ("a: *nowhere\n", {}, "undefined alias"),
        ("x: !!python/object:os.system 1\n", {}, "could not determine a constructor"),
        ("? [1, 2]\n: x\n", {}, "a mapping key must be a scalar"),
        ("a\x07: 1\n", {}, "character 0x0007 at offset 1"),
        ("a: 12345678\n", {"max_bytes": 8}, "over the limit of 8 bytes"),
        ("a: ü\n", {"max_bytes": 5}, "6 bytes is over the limit"),
    ],
)
def test_refusals_are_invalid_input_with_source_and_location(
    text: str, limits: dict[str, int], fragment: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        load(text, **limits)
    assert caught.value.detail.startswith("in.yaml: ")
    assert fragment in caught.value.detail


def test_non_utf8_bytes_are_refused() -> None:
    with pytest.raises(InvalidInput, match="not UTF-8"):
        load(b"a: \xff\xfe\n")


def test_lone_surrogates_in_text_are_refused() -> None:
    with pytest.raises(InvalidInput, match="not valid Unicode"):
        load("a: \udcff\n")


def test_billion_laughs_is_refused_even_with_a_generous_alias_budget() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 8):
        prev, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    bomb = "\n".join(levels) + "\n"
    assert len(bomb) < 1000
    with pytest.raises(InvalidInput, match="aliases expand"):
        load(bomb, max_aliases=1000)


def test_alias_to_a_deep_node_counts_its_depth() -> None:
    deep = "[" * 40 + "]" * 40
    text = f"a: &deep {deep}\nb: {'[' * 30}*deep{']' * 30}\n"
    with pytest.raises(InvalidInput, match="through an alias"):
        load(text, max_depth=64)


def test_deep_json_is_refused_without_recursion_error() -> None:
    with pytest.raises(InvalidInput, match="nesting"):
        load("[" * 100_000 + "]" * 100_000, max_bytes=1_000_000)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!?|>'\"#%@`,\n\t 01.~<")), max_size=60))
def test_arbitrary_input_parses_or_raises_invalid_input_only(text: str) -> None:
    # Any other exception type escaping load_yaml fails the test.
    try:
        load(text)
    except InvalidInput as exc:
        detail = exc.detail
    else:
        detail = "in.yaml: parsed"
    assert detail.startswith("in.yaml: ")


def test_dump_keeps_order_and_unicode() -> None:
    assert dump_yaml({"zeta": 1, "alpha": ["ü", {"b": True}]}) == (
        "zeta: 1\nalpha:\n- ü\n- b: true\n"
    )


TRICKY_STRINGS = ["1e3", "0o17", "010", "yes", "on", "true", "1_000", "2024-01-01", "~", ""]
TRICKY_VALUES = [*TRICKY_STRINGS, "0x1F", ".5", "null", 1e-5, 10, True, None, 0.1, math.inf]


def test_dump_quotes_strings_yaml_1_2_would_retype() -> None:
    data = {f"k{i}": value for i, value in enumerate(TRICKY_VALUES)}
    assert load(dump_yaml(data)) == data


def test_dump_is_read_back_identically_by_ruamel_as_dvc_reads_it() -> None:
    ruamel_yaml = pytest.importorskip("ruamel.yaml")
    data = {f"k{i}": value for i, value in enumerate(TRICKY_VALUES)}
    assert ruamel_yaml.YAML(typ="safe").load(dump_yaml(data)) == data


def test_dump_refuses_objects_with_type_error() -> None:
    with pytest.raises(TypeError, match="cannot represent"):
        dump_yaml({"a": object()})
