"""Run parameter overrides: dotted keys onto params.yaml, typos refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.domain.errors import InvalidParams
from controller.domain.params import apply_overrides

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


def test_non_json_values_are_refused() -> None:
    with pytest.raises(InvalidParams, match="JSON"):
        apply_overrides(PARAMS, {"seed": float("nan")})


@given(st.dictionaries(st.sampled_from(["train.C", "train.max_iter", "seed"]), st.integers()))
def test_overrides_only_change_named_keys(overrides: dict[str, int]) -> None:
    out = apply_overrides(PARAMS, overrides)
    assert out["seed"] == overrides.get("seed", 42)
    assert out["train"]["C"] == overrides.get("train.C", 1.0)  # type: ignore[index]
    assert out["train"]["layers"] == [8, 4]  # type: ignore[index]
