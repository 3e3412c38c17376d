"""Generated ids and names are DNS-1123; resource strings parse or are refused clearly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.domain.errors import InvalidInput
from controller.domain.naming import is_dns1123_label, is_id, new_id, run_branch
from controller.domain.resources import ResourceRef, parse_resource


@given(st.sampled_from(["exp", "run", "res"]))
def test_ids_are_dns1123_and_recognised(kind: str) -> None:
    value = new_id(kind)
    assert is_dns1123_label(value)
    assert is_id(value, kind)
    assert run_branch(value) == f"runs/{value}"


@given(st.text(max_size=70))
def test_dns1123_check_matches_the_rule(value: str) -> None:
    ok = is_dns1123_label(value)
    if ok:
        assert len(value) <= 63
        assert value[0].isalnum()
        assert value[-1].isalnum()
        assert set(value) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("local", ResourceRef("local")),
        ("job", ResourceRef("job")),
        ("sts/trainer", ResourceRef("sts", "trainer")),
        ("deploy/gpu-pool-1", ResourceRef("deploy", "gpu-pool-1")),
    ],
)
def test_resources_parse(text: str, ref: ResourceRef) -> None:
    assert parse_resource(text) == ref
    assert str(ref) == text


@pytest.mark.parametrize("text", ["", "sts/", "sts/Bad", "pod/x", "deploy/-x", "sts/a/b", "Local"])
def test_bad_resources_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="local, job"):
        parse_resource(text)
