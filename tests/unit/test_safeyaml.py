"""safeyaml: YAML 1.2 scalars like DVC, JSON, and every limit refused as InvalidInput.

Also: values that cannot be constructed (bad dates, ``0x_``, ``!!float abc``) and
integers over the digit limit are InvalidInput with a location, in YAML and JSON;
``load_json`` is strict JSON with the same limits; ``compose_yaml`` keeps positions.
"""

from __future__ import annotations

import datetime
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.domain.errors import InvalidInput
from controller.domain.safeyaml import (
    MAX_INT_DIGITS,
    compose_yaml,
    dump_yaml,
    load_json,
    load_yaml,
)


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


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: 2020-99-99\n", "line 1, column 4: this value is not valid as a date or timestamp"),
        ("a: 2020-01-01 25:00:00\n", "line 1, column 4: this value is not valid as a date"),
        ("a: 2020-01-01 10:00:00 +99:00\n", "not valid as a date or timestamp"),
        ("a: 0x_\n", "line 1, column 4: this value is not valid as an integer"),
        ("a: 0b_\n", "not valid as an integer"),
        ("a: !!float abc\n", "line 1, column 4: this value is not valid as a float"),
        ("a: !!float\n", "not valid as a float"),
        ("a: !!bool abc\n", "line 1, column 4: this value is not valid as a boolean"),
        ("a: !!timestamp xyz\n", "line 1, column 4: this value is not valid as a date"),
        ("b: 1\na: !!timestamp\n", "line 2, column 4: this value is not valid as a date"),
        ("a: !!int 1.5\n", "not valid as an integer"),
        ("{a: [1, 2020-99-99]}\n", "line 1, column 9: this value is not valid as a date"),
        ("? 2020-99-99\n: x\n", "line 1, column 3: this value is not valid as a date"),
        ('{"a": 1, "b": 2020-99-99}', "this value is not valid as a date"),  # not JSON: YAML
    ],
)
def test_values_that_cannot_be_constructed_are_invalid_input(text: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load(text)
    assert caught.value.detail.startswith("in.yaml: ")
    assert fragment in caught.value.detail


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "1" * 5000 + "\n",
        "a: -" + "9" * (MAX_INT_DIGITS + 1) + "\n",
        "a: 0x" + "f" * (MAX_INT_DIGITS + 1) + "\n",
        "a: !!int " + "1" * 5000 + "\n",
        '{"a": ' + "1" * 5000 + "}",
        '{"a": [-' + "1" * 5000 + "]}",
    ],
)
def test_integers_over_the_digit_limit_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match=f"over the limit of {MAX_INT_DIGITS} digits"):
        load(text)


def test_integers_at_the_digit_limit_are_read() -> None:
    assert load("a: " + "9" * MAX_INT_DIGITS + "\n") == {"a": int("9" * MAX_INT_DIGITS)}
    assert load('{"a": -' + "9" * MAX_INT_DIGITS + "}") == {"a": -int("9" * MAX_INT_DIGITS)}
    assert load("a: 0x" + "f" * MAX_INT_DIGITS + "\n") == {"a": 16**MAX_INT_DIGITS - 1}


def test_json_first_false_reads_json_as_yaml() -> None:
    # JSON reads a tab-indented document; YAML, as DVC reads params.yaml, does not.
    tabbed = '{\n\t"a": 1\n}'
    assert load(tabbed) == {"a": 1}
    with pytest.raises(InvalidInput):
        load_yaml(tabbed, source="in.yaml", json_first=False)
    assert load_yaml('{"a": [1, 2.5]}', source="in.yaml", json_first=False) == {"a": [1, 2.5]}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"[" * 60_000, "nesting deeper than 64 levels"),
        (b"[" * 65 + b"]" * 65, "nesting deeper than 64 levels"),
        (b'{"git": {"n": ' + b"1" * 5000 + b"}}", "over the limit of 1000 digits"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"a": secret-value}', "not valid JSON: Expecting value at line 1 column 7"),
        (b"a: 1\n", "not valid JSON"),  # YAML is not accepted here
        (b"\xff", "not UTF-8"),
        (b"", "not valid JSON"),
    ],
)
def test_load_json_refuses_with_invalid_input_only(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_json(data, source="repo_json")
    assert caught.value.detail.startswith("repo_json: ")
    assert fragment in caught.value.detail
    assert "secret-value" not in caught.value.detail


def test_load_json_reads_json() -> None:
    assert load_json('\ufeff{"a": [1, 2.5, null, true, "x"]}', source="j") == {
        "a": [1, 2.5, None, True, "x"]
    }


def test_compose_yaml_keeps_positions() -> None:
    root = compose_yaml("\ufeff# c\na: 1\nb: [x]\n", source="p")
    assert root is not None
    (key_a, value_a), (_, value_b) = root.value
    assert (key_a.value, value_a.value) == ("a", "1")
    assert (value_a.start_mark.line, value_a.start_mark.column) == (1, 3)
    assert value_b.flow_style is True
    assert compose_yaml("# nothing\n", source="p") is None
    with pytest.raises(InvalidInput, match="p: line 1, column 6: nesting deeper than 3"):
        compose_yaml("a: [[[1]]]\n", source="p", max_depth=3)


_FRAGMENTS = [
    *("!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!null ", "!!str ", "!!binary "),
    *("!!set ", "!!omap ", "!!pairs ", "!!seq ", "!!map "),
    *("0x", "0o", "0b", "_", "-", "+", ".", "e", "E", ":", "T", "Z", " ", "\n", "[", "]"),
    *("{", "}", ",", "? ", "a", "1", "9", "2020-", "12", "99", ".inf", ".nan", "yes", "~"),
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=12).map("".join))
def test_tagged_and_numeric_scalars_parse_or_raise_invalid_input_only(scalar: str) -> None:
    # Any other exception type escaping load_yaml fails the test.
    for text in (f"a: {scalar}\n", f"- {scalar}\n", f"{{a: {scalar}}}"):
        try:
            load(text)
        except InvalidInput as exc:
            detail = exc.detail
        else:
            detail = "in.yaml: parsed"
        assert detail.startswith("in.yaml: ")
