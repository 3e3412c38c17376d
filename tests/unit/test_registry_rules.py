"""The registry's pure rules: artifact and stage names, SemVer order and GTO's default bump,
tag names and their parsing (checked against GTO's own parser, the format's reference),
and the view built from tags: latest assignment wins, rollback, unassign, deregister."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from gto.constants import name_re as gto_name_re
from gto.tag import parse_name as gto_parse_name
from gto.versions import SemVer as GtoSemVer
from hypothesis import given
from hypothesis import strategies as st

from controller.cli.registry import render_promotion, render_registry
from controller.domain import registry as reg
from controller.domain.errors import InvalidInput

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


# -- names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["wine-model", "m", "a1", "0-model-9", "x" * 63])
def test_artifact_names_accepted(name: str) -> None:
    assert reg.check_artifact_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Wine", "-a", "a-", "a_b", "a/b", "a.b", "a b", "a@v1", "a#b", "x" * 64, "é", "a\n"],
)
def test_artifact_names_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        reg.check_artifact_name(name)
    assert caught.value.errors[0]["loc"] == "artifact"


@given(st.text(alphabet="abz09-_/.A@# ", max_size=70))
def test_an_accepted_artifact_name_is_a_dns_label_and_a_gto_name(name: str) -> None:
    try:
        reg.check_artifact_name(name)
    except InvalidInput:
        assert not DNS_LABEL.match(name)
        return
    assert DNS_LABEL.match(name)
    assert gto_name_re.match(name)


@pytest.mark.parametrize("stage", ["prod", "Staging", "qa_2", "pre-prod", "p"])
def test_stages_accepted(stage: str) -> None:
    assert reg.check_stage(stage) == stage


@pytest.mark.parametrize("stage", ["", "_prod", "prod-", "a/b", "a b", "a#b", "a!", "p" * 64])
def test_stages_refused(stage: str) -> None:
    with pytest.raises(InvalidInput):
        reg.check_stage(stage)


# -- versions -------------------------------------------------------------------------

SEMVER_ORDER = [  # SemVer 2.0, section 11's example, plus build metadata and majors
    "v0.9.9",
    "v1.0.0-alpha",
    "v1.0.0-alpha.1",
    "v1.0.0-alpha.beta",
    "v1.0.0-beta",
    "v1.0.0-beta.2",
    "v1.0.0-beta.11",
    "v1.0.0-rc.1",
    "v1.0.0",
    "v1.0.1",
    "v1.2.0",
    "v1.10.0",
    "v2.0.0",
]


def test_semver_precedence() -> None:
    shuffled = list(reversed(SEMVER_ORDER))
    ordered = sorted(shuffled, key=lambda v: reg.parse_version(v).precedence())
    assert ordered == SEMVER_ORDER
    assert reg.parse_version("v1.0.0+b1").precedence() == reg.parse_version("v1.0.0").precedence()


@pytest.mark.parametrize("text", ["v1.2.3", "1.2.3", "v1.0.0-rc.1+build.5", "v0.0.1"])
def test_versions_parse_and_print_with_the_v_prefix(text: str) -> None:
    assert str(reg.parse_version(text)) == ("" if text.startswith("v") else "v") + text


@pytest.mark.parametrize(
    "text", ["", "v1", "v1.2", "v01.2.3", "V1.2.3", "v1.2.3-", "latest", "v1.2.3 ", "v1.2.3\n"]
)
def test_bad_versions_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        reg.parse_version(text)


@pytest.mark.parametrize(
    ("registered", "expected"),
    [
        ([], "v0.0.1"),
        (["v0.0.1"], "v0.0.2"),
        (["v1.2.0", "v0.9.0", "v1.1.7"], "v1.2.1"),
        (["v1.3.0-rc.1", "v1.2.0"], "v1.3.1"),
        (["v1.2.0+build.3"], "v1.2.1"),
    ],
)
def test_next_version_is_gtos_default_bump(registered: list[str], expected: str) -> None:
    assert reg.next_version(registered) == expected
    if registered:  # GTO's own bump of the greatest version agrees
        greatest = max(registered, key=lambda v: reg.parse_version(v).precedence())
        assert GtoSemVer(greatest).bump_patch().version == expected


# -- tags -----------------------------------------------------------------------------


def test_tag_names_are_gtos() -> None:
    assert reg.register_tag("wine-model", "v1.2.0") == "wine-model@v1.2.0"
    assert reg.assign_tag("wine-model", "prod", 3) == "wine-model#prod#3"
    assert gto_parse_name("wine-model#prod#3") == {
        "name": "wine-model",
        "stage": "prod",
        "action": gto_parse_name("a#b#1")["action"],
        "counter": 3,
    }


TAGS = [
    "wine-model@v1.2.0",
    "wine-model@v1.0.0-rc.1+b.2",
    "wine-model#prod#3",
    "wine-model#Prod_2#12",
    "a@v1.0.0!#2",
    "a#prod!#4",
    "a@deprecated#5",
    "a@deprecated",
    "dir/sub=my-model@v0.0.1",
]


@pytest.mark.parametrize("tag", TAGS)
def test_tags_parse_as_gto_parses_them(tag: str) -> None:
    ours = reg.parse_tag(tag)
    theirs = gto_parse_name(tag)
    assert ours is not None
    assert ours.artifact == theirs["name"]
    assert ours.action == theirs["action"].value
    assert ours.version == theirs.get("version")
    assert ours.stage == theirs.get("stage")
    assert ours.counter == theirs.get("counter")


@pytest.mark.parametrize(
    "tag",
    ["v1.0.0", "release-2024", "wine-model@1.0.0", "wine-model#", "@v1.0.0", "a#b#c", "x@v1"],
)
def test_other_tags_are_not_registry_tags(tag: str) -> None:
    assert reg.parse_tag(tag) is None
    assert gto_parse_name(tag, raise_on_fail=False) == {}


@given(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
    st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9_-]{0,10}[a-zA-Z0-9])?", fullmatch=True),
    st.integers(1, 10**6),
    st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)),
)
def test_written_tags_round_trip_through_both_parsers(
    artifact: str, stage: str, n: int, parts: tuple[int, int, int]
) -> None:
    version = "v{}.{}.{}".format(*parts)
    assign = reg.parse_tag(reg.assign_tag(artifact, stage, n))
    assert assign == reg.ParsedTag(artifact, "assign", stage=stage, counter=n)
    assert gto_parse_name(reg.assign_tag(artifact, stage, n))["counter"] == n
    register = reg.parse_tag(reg.register_tag(artifact, version))
    assert register == reg.ParsedTag(artifact, "register", version=version)
    assert gto_parse_name(reg.register_tag(artifact, version))["version"] == version


def test_next_counter_counts_over_every_tag_of_the_artifact() -> None:
    names = ["m@v0.0.1", "m#prod#1", "m#staging#4", "m#prod!#2", "other#prod#9", "mm#prod#7"]
    assert reg.next_counter(names, "m") == 5
    assert reg.next_counter(names, "new") == 1
    assert reg.next_counter(["m@v0.0.1"], "m") == 1


def test_messages_start_as_gtos_and_carry_run_and_path() -> None:
    message = reg.register_message("m", "v0.0.1", run_id="run-1", path="models/model.pkl")
    assert message.splitlines()[0] == "Registering artifact m version v0.0.1"
    assert reg.message_fields(message) == {"run": "run-1", "path": "models/model.pkl"}
    assign = reg.assign_message("m", "prod", "v0.0.1", run_id=None)
    assert assign.strip() == "Assigning stage prod to artifact m version v0.0.1"
    assert reg.message_fields("path: x\nsecond line") == {}


# -- the view -------------------------------------------------------------------------


def tag(name: str, commit: str, seconds: int, message: str = "") -> reg.TagRecord:
    return reg.TagRecord(
        name=name,
        commit=commit,
        created_at=T0 + timedelta(seconds=seconds),
        message=message or name,
        tagger="mlexp",
        tagger_email="mlexp@example.com",
    )


def test_latest_assignment_wins_and_rollback_is_promoting_again() -> None:
    tags = [
        tag("m@v0.0.1", "c1", 0, reg.register_message("m", "v0.0.1", run_id="r1", path="p.pkl")),
        tag("m@v0.0.2", "c2", 1),
        tag("m#prod#1", "c1", 2),
        tag("m#prod#2", "c2", 3),
        tag("m#staging#3", "c1", 4),
    ]
    view = reg.build_view(tags)["m"]
    assert view.latest == "v0.0.2"
    assert [v.version for v in view.versions] == ["v0.0.2", "v0.0.1"]
    assert {s: v.version for s, v in view.stages.items()} == {"prod": "v0.0.2", "staging": "v0.0.1"}
    assert view.stages["prod"].tag == "m#prod#2"
    assert view.versions[1].path == "p.pkl"
    assert view.versions[1].stages == ["staging"]
    assert [e.tag for e in view.stages["prod"].history] == ["m#prod#2", "m#prod#1"]
    assert [e.event for e in view.history] == [
        "assignment", "assignment", "assignment", "registration", "registration"
    ]  # fmt: skip

    rolled_back = reg.build_view([*tags, tag("m#prod#4", "c1", 5)])["m"]
    assert rolled_back.stages["prod"].version == "v0.0.1"
    assert rolled_back.stages["prod"].tag == "m#prod#4"
    assert rolled_back.versions[1].stages == ["prod", "staging"]
    assert rolled_back.versions[0].stages == []


def test_assignments_in_one_second_are_ordered_by_n() -> None:
    tags = [tag("m@v0.0.1", "c1", 0), tag("m@v0.0.2", "c2", 0)]
    tags += [tag("m#prod#2", "c1", 5), tag("m#prod#1", "c2", 5)]
    assert reg.build_view(tags)["m"].stages["prod"].version == "v0.0.1"


def test_unassign_and_deregister_as_gto_reads_them() -> None:
    tags = [
        tag("m@v0.0.1", "c1", 0),
        tag("m@v0.0.2", "c2", 1),
        tag("m#prod#1", "c1", 2),
        tag("m#prod#2", "c2", 3),
        tag("m#prod!#3", "c2", 4),  # unassign v0.0.2: prod falls back to v0.0.1
    ]
    assert reg.build_view(tags)["m"].stages["prod"].version == "v0.0.1"
    deregistered = reg.build_view([*tags[:4], tag("m@v0.0.2!#3", "c2", 4)])["m"]
    assert deregistered.latest == "v0.0.1"
    assert deregistered.stages["prod"].version == "v0.0.1"
    assert [v.active for v in deregistered.versions] == [False, True]
    gone = reg.build_view([*tags[:3], tag("m#prod!#2", "c1", 3)])["m"]
    assert gone.stages == {}


def test_stage_on_an_unregistered_commit_and_other_tags_are_ignored() -> None:
    tags = [tag("m@v0.0.1", "c1", 0), tag("m#prod#1", "c9", 1), tag("release-1", "c1", 2)]
    view = reg.build_view(tags)
    assert list(view) == ["m"]
    assert view["m"].stages == {}
    assert reg.build_view([]) == {}


def test_artifacts_are_apart() -> None:
    tags = [tag("a@v0.0.1", "c1", 0), tag("b@v0.0.1", "c1", 0), tag("b#prod#1", "c1", 1)]
    view = reg.build_view(tags)
    assert sorted(view) == ["a", "b"]
    assert view["a"].stages == {}
    assert view["b"].stages["prod"].version == "v0.0.1"


# -- CLI rendering --------------------------------------------------------------------


def test_registry_table_shows_stages_versions_and_commands() -> None:
    view = reg.build_view([tag("m@v0.0.1", "c" * 40, 0), tag("m#prod#1", "c" * 40, 1)])["m"]
    stage = view.stages["prod"].model_copy(update={"get_command": "dvc get /r p --rev m#prod#1"})
    version = view.versions[0].model_copy(update={"run_id": "run-1", "metrics": {"acc": 0.91234}})
    body = view.model_copy(update={"stages": {"prod": stage}, "versions": [version]})
    text = render_registry({"experiment_id": "exp-1", "artifacts": [body.model_dump(mode="json")]})
    assert "m  latest=v0.0.1  prod=v0.0.1" in text
    assert "run-1" in text
    assert "acc=0.91234" in text
    assert "cccccccccccc" in text
    assert "prod: dvc get /r p --rev m#prod#1" in text
    assert "no artifacts" in render_registry({"experiment_id": "exp-1", "artifacts": []})
    promotion = {
        "artifact": "m",
        "registered": True,
        "assigned": True,
        "metric": "acc",
        "value": 0.9,
        "version": version.model_dump(mode="json"),
        "stage": stage.model_dump(mode="json"),
    }
    out = render_promotion(promotion)
    assert "registered m v0.0.1" in out
    assert "promoted m v0.0.1 -> prod (m#prod#1)" in out
