"""Params: the uploaded file (only what JSON carries exactly), run overrides by dotted
key (typos refused), and a run's params.yaml written from the uploaded document."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.domain.errors import InvalidBundle, InvalidParams
from controller.domain.params import apply_overrides, parse_params, render_params
from controller.domain.safeyaml import dump_yaml, load_yaml

PARAMS = {"train": {"C": 1.0, "max_iter": 500, "layers": [8, 4]}, "seed": 42}


def test_override_nested_and_list_items() -> None:
    out = apply_overrides(PARAMS, {"train.C": 0.5, "train.layers.1": 2, "seed": 7})
    assert out == {"train": {"C": 0.5, "max_iter": 500, "layers": [8, 2]}, "seed": 7}
    assert PARAMS["train"]["C"] == 1.0  # type: ignore[index]  # the input is untouched


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("train.c", "not in params.yaml"),
        ("train.layers.5", "not an index"),
        ("seed.x", "not a mapping"),
        ("train..C", "dotted key"),
        ("", "dotted key"),
    ],
)
def test_bad_keys_are_refused(key: str, message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        apply_overrides(PARAMS, {key: 1})


@pytest.mark.parametrize(
    ("value", "name"),
    [(math.nan, "NaN"), (math.inf, "infinity"), (-math.inf, "-infinity"), ([1, math.inf], "")],
)
def test_non_finite_overrides_are_refused(value: object, name: str) -> None:
    with pytest.raises(InvalidParams, match="JSON cannot carry infinity or NaN") as exc:
        apply_overrides(PARAMS, {"seed": value})
    assert exc.value.detail.startswith("params.seed")
    assert f" is {name}" in exc.value.detail


def test_huge_integer_overrides_and_objects_are_refused() -> None:
    with pytest.raises(InvalidParams, match="over the limit of 1000 digits"):
        apply_overrides(PARAMS, {"seed": 10**2000})
    with pytest.raises(InvalidParams, match=r"params\.seed is a set"):
        apply_overrides(PARAMS, {"seed": {1}})
    with pytest.raises(InvalidParams, match=r"params\.seed\.0 holds a lone surrogate"):
        apply_overrides(PARAMS, {"seed": ["\ud800"]})
    with pytest.raises(InvalidParams, match=r"a key in params\.seed holds a lone surrogate"):
        apply_overrides(PARAMS, {"seed": {"\udc00": 1}})


@given(st.dictionaries(st.sampled_from(["train.C", "train.max_iter", "seed"]), st.integers()))
def test_overrides_only_change_named_keys(overrides: dict[str, int]) -> None:
    out = apply_overrides(PARAMS, overrides)
    assert out["seed"] == overrides.get("seed", 42)
    assert out["train"]["C"] == overrides.get("train.C", 1.0)  # type: ignore[index]
    assert out["train"]["layers"] == [8, 4]  # type: ignore[index]


def parse(text: str | bytes) -> tuple[dict[str, object], str]:
    data = text.encode() if isinstance(text, str) else text
    parsed = parse_params(data, max_bytes=1 << 20)
    return parsed.values, parsed.document


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("lr: .inf\n", "params.lr is infinity"),
        ("lr: -.Inf\n", "params.lr is -infinity"),
        ("lr: .nan\n", "params.lr is NaN"),
        ("a: {b: [1, .inf]}\n", "params.a.b.1 is infinity"),
        ("lr: 1e400\n", "params.lr is infinity"),  # a float too big for a double
        ('{"lr": 1e999}', "params.lr is infinity"),
        ('{"lr": NaN}', "params.lr is NaN"),
        ('{"lr": -Infinity}', "params.lr is -infinity"),
    ],
)
def test_infinity_and_nan_are_refused_with_a_clear_detail(text: str, fragment: str) -> None:
    with pytest.raises(InvalidBundle) as exc:
        parse(text)
    assert exc.value.detail.startswith("hyperparams_file: ")
    assert fragment in exc.value.detail
    assert "JSON cannot carry infinity or NaN" in exc.value.detail


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: 2020-99-99\n", "line 1, column 4: this value is not valid as a date"),
        ("a: 0x_\n", "not valid as an integer"),
        ("a: !!float abc\n", "not valid as a float"),
        ("a: !!bool abc\n", "not valid as a boolean"),
        ("a: !!timestamp xyz\n", "not valid as a date"),
        ("a: " + "1" * 5000 + "\n", "over the limit of 1000 digits"),
        ('{"a": ' + "1" * 5000 + "}", "over the limit of 1000 digits"),
        ("when: 2026-01-01\n", "params.when is a date"),
        ("x: {1: a}\n", "key 1 in params.x is not a string"),
        ("- 1\n", "must hold a mapping"),
    ],
)
def test_bad_params_files_are_invalid_bundle(text: str, fragment: str) -> None:
    with pytest.raises(InvalidBundle) as exc:
        parse(text)
    assert exc.value.detail.startswith("hyperparams_file")
    assert fragment in exc.value.detail


UPLOADED = """\
# Hyperparameters of the wine model (this comment is kept).
zeta: 1                 # keys stay in this order, not sorted
lr: 1e-10
hex_text: "0x1F"
octal: 0o17
big: 1_000
nested: [[1, 2], [3, [4, 5]], {k: v}]
train:
  C: 1.0
  layers:
  - 8
  - 4
  note: |
    two
    lines
alpha: "yes"
"""


def test_the_uploaded_yaml_is_the_committed_document() -> None:
    values, document = parse(UPLOADED)
    assert document == UPLOADED
    assert list(values) == ["zeta", "lr", "hex_text", "octal", "big", "nested", "train", "alpha"]
    assert values["lr"] == 1e-10
    assert values["hex_text"] == "0x1F"
    assert values["octal"] == 15


def test_uploaded_json_is_committed_as_is_when_yaml_reads_it_alike() -> None:
    text = '{"b": 1e-10, "a": [1, {"c": "0x1F"}], "d": 1.0}\n'
    values, document = parse(text)
    assert document == text
    assert json.dumps(load_yaml(document, source="p", json_first=False)) == json.dumps(values)


def test_uploaded_json_that_yaml_cannot_read_is_written_as_yaml_of_the_same_values() -> None:
    text = '{\n\t"b": 1e-10,\n\t"a": [1, "0x1F"]\n}\n'  # tabs: fine for JSON, not YAML
    values, document = parse(text)
    assert document != text
    assert json.dumps(load_yaml(document, source="p", json_first=False)) == json.dumps(values)
    assert values == {"b": 1e-10, "a": [1, "0x1F"]}


def test_a_byte_order_mark_is_kept_in_the_document() -> None:
    values, document = parse("\ufeffx: 1\n".encode())
    assert values == {"x": 1}
    assert document == "\ufeffx: 1\n"
    assert render_params(document, {"x": 2}) == "\ufeffx: 2\n"


def test_an_override_changes_only_its_own_text() -> None:
    _, document = parse(UPLOADED)
    out = render_params(document, {"train.C": 0.5, "zeta": "z"})
    expected = UPLOADED.replace("  C: 1.0", "  C: 0.5").replace("zeta: 1 ", 'zeta: "z" ')
    assert out == expected


@pytest.mark.parametrize(
    ("overrides", "changed"),
    [
        ({"nested.1.1.0": 40}, "nested: [[1, 2], [3, [40, 5]], {k: v}]"),
        ({"nested.2": [1]}, "nested: [[1, 2], [3, [4, 5]], [1]]"),
        ({"train.note": "x"}, '  note: "x"\n'),
        ({"train.layers": {"a": 1}}, '  layers: {"a": 1}\n  note'),
        ({"hex_text": "1e3"}, 'hex_text: "1e3"'),
        ({"lr": 1e-05}, "lr: 1e-05"),
    ],
)
def test_overrides_of_every_kind_of_node_keep_the_rest(
    overrides: dict[str, object], changed: str
) -> None:
    values, document = parse(UPLOADED)
    out = render_params(document, overrides)
    assert changed in out
    assert out.startswith("# Hyperparameters of the wine model (this comment is kept).\n")
    assert "# keys stay in this order, not sorted" in out
    assert strict(load_yaml(out, source="p")) == strict(apply_overrides(values, overrides))


def test_dvc_reads_the_run_params_as_intended() -> None:
    ruamel_yaml = pytest.importorskip("ruamel.yaml")
    values, document = parse(UPLOADED)
    overrides = {"train.C": 0.25, "hex_text": "0o7", "nested.0": [True, None]}
    out = render_params(document, overrides)
    assert strict(ruamel_yaml.YAML(typ="safe").load(out)) == strict(
        apply_overrides(values, overrides)
    )


@pytest.mark.parametrize(
    ("document", "overrides"),
    [
        ("base: &b {x: 1}\nd: *b\n", {"d.x": 2}),  # an edit through an alias would change base
        ("a: &v 1\nb: *v\n", {"b": 2}),
        ("base: &b {x: 1, y: 1}\nd:\n  <<: *b\n  y: 2\n", {"d.x": 3}),  # from a merge key
        ("train: {C: 1, D: 2}\n", {"train": {"C": 5, "D": 6}, "train.C": 7}),  # overlapping
    ],
)
def test_edits_that_cannot_be_made_in_place_write_the_values(
    document: str, overrides: dict[str, object]
) -> None:
    values = load_yaml(document, source="p")
    assert isinstance(values, dict)
    out = render_params(document, overrides)
    assert strict(load_yaml(out, source="p")) == strict(apply_overrides(values, overrides))


def test_no_overrides_is_the_document_itself() -> None:
    assert render_params(UPLOADED, {}) is UPLOADED


def test_render_refuses_bad_overrides() -> None:
    with pytest.raises(InvalidParams, match=r"not in params\.yaml"):
        render_params(UPLOADED, {"train.c": 1})
    with pytest.raises(InvalidParams, match="JSON cannot carry"):
        render_params(UPLOADED, {"lr": math.inf})


def strict(value: object) -> str:
    """Equal only for equal types, values and key order (1, 1.0 and true differ)."""
    return json.dumps(value)


_SCALARS = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["0x1F", "1e3", "yes", "~", "2024-01-01", "010", "-", "#x", ": a"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(min_size=1, max_size=5).filter(lambda k: "." not in k), inner, max_size=3
        )
    ),
    max_leaves=12,
)
_DOCUMENTS = st.dictionaries(
    st.text(min_size=1, max_size=5).filter(lambda k: "." not in k), _VALUES, min_size=1, max_size=5
)


def _leaves(value: object, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in [f"{prefix}{k}", *_leaves(v, f"{prefix}{k}.")]]
    if isinstance(value, list):
        return [
            p for i, v in enumerate(value) for p in [f"{prefix}{i}", *_leaves(v, f"{prefix}{i}.")]
        ]
    return []


@settings(max_examples=200, deadline=None)
@given(_DOCUMENTS, st.booleans(), st.data())
def test_a_run_sees_its_overrides_and_every_other_value_exactly(
    params: dict[str, object], as_json: bool, data: st.DataObject
) -> None:
    text = json.dumps(params) if as_json else dump_yaml(params)
    values, document = parse(text)
    paths = _leaves(values)
    chosen = data.draw(st.lists(st.sampled_from(paths), max_size=3, unique=True))
    overrides = {path: data.draw(_VALUES) for path in chosen}
    try:
        expected = apply_overrides(values, overrides)
    except InvalidParams:
        return  # e.g. "a" replaced by a scalar, then "a.b" inside it
    out = render_params(document, overrides)
    assert strict(load_yaml(out, source="p", json_first=False)) == strict(expected)
