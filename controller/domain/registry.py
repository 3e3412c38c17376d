"""A model registry in git tags, in GTO's format (pure: names, versions, tags, the view).

GTO (Git Tag Ops, PyPI ``gto``) keeps a registry in annotated git tags, and DVC's
tools read it; so the service writes exactly what ``gto`` writes and reads it back:

* ``<artifact>@v<semver>`` registers a version on a commit (GTO's ``gto register``);
* ``<artifact>#<stage>#<n>`` assigns a stage to the version on the tag's commit
  (``gto assign``); ``n`` counts up per artifact, over all its counted tags;
* ``<artifact>@v<semver>!`` deregisters, ``<artifact>#<stage>!#<n>`` unassigns,
  ``<artifact>@deprecated`` deprecates: written by ``gto`` only, honoured when read.

A stage's version is the one assigned last (tagger date, then ``n``): rolling back is
promoting an older version again. Lightweight tags are not events (GTO ignores them).

Names: an artifact is a DNS-1123 label (lower-case letters, digits, ``-``, at most 63),
a subset of GTO's rule (which DVC's ``artifacts:`` section shares), so every name the
service accepts is one GTO reads. A stage follows GTO's rule without ``/``: letters,
digits, ``-`` and ``_``, starting and ending with a letter or digit.

Versions are SemVer 2.0 with GTO's ``v`` prefix; when a registration names none, the
next is GTO's default: the greatest registered version with its patch bumped
(``v1.2.0`` -> ``v1.2.1``, ``v1.3.0-rc.1`` -> ``v1.3.1``), or ``v0.0.1`` for the first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.domain.errors import InvalidInput
from controller.domain.models import JsonValue

__all__ = [
    "ArtifactView",
    "Event",
    "ParsedTag",
    "SemVer",
    "StageView",
    "TagRecord",
    "VersionView",
    "assign_message",
    "assign_tag",
    "build_view",
    "check_artifact_name",
    "check_stage",
    "message_fields",
    "next_counter",
    "next_version",
    "parse_tag",
    "parse_version",
    "register_message",
    "register_tag",
]

MAX_NAME = 63
MAX_VERSION = 128
MAX_MESSAGE = 4096  # a tag message kept in the view; a longer one is cut
FIRST_VERSION = "v0.0.1"

_ARTIFACT = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_STAGE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_-]*[a-zA-Z0-9])?$")
_IDENT = r"(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
_SEMVER = (
    r"(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?"
    r"(?:\+(?P<build>[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
_VERSION = re.compile(rf"^v?{_SEMVER}$")
# GTO's tag grammar; artifact names in tags may hold what GTO allows (a repository can
# carry tags written by ``gto`` itself), the service writes only its stricter names.
_GTO_NAME = r"[a-zA-Z0-9](?:[a-zA-Z0-9/_-]*[a-zA-Z0-9])?"
_TAG = re.compile(
    rf"^(?P<artifact>(?:[a-zA-Z0-9_./-]+=)?{_GTO_NAME})"
    rf"(?:(?:#(?P<stage>{_GTO_NAME})|@(?P<version>v{_SEMVER}))(?P<cancel>!?)|@(?P<deprecated>deprecated))"
    r"(?:#(?P<counter>[0-9]{1,9}))?$"
)


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(
        f"{field}: {message}", errors=[{"loc": field, "msg": message, "type": "value_error"}]
    )


def check_artifact_name(name: str) -> str:
    if len(name) > MAX_NAME or not _ARTIFACT.fullmatch(name):
        raise _invalid(
            "artifact",
            f"an artifact name is at most {MAX_NAME} lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (e.g. 'wine-model')",
        )
    return name


def check_stage(stage: str) -> str:
    if len(stage) > MAX_NAME or not _STAGE.fullmatch(stage):
        raise _invalid(
            "stage",
            f"a stage is at most {MAX_NAME} letters, digits, '-' and '_', starting and "
            "ending with a letter or digit (e.g. 'prod')",
        )
    return stage


@dataclass(frozen=True)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str | None = None

    def __str__(self) -> str:
        text = f"v{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        return text + (f"+{self.build}" if self.build else "")

    def precedence(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        """SemVer 2.0 precedence: a release outranks its pre-releases; numeric identifiers
        compare as numbers and rank below alphanumeric ones; build metadata is ignored."""
        pre = tuple(
            (0, int(part), "") if part.isdigit() else (1, 0, part) for part in self.prerelease
        )
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def bump_patch(self) -> SemVer:
        return SemVer(self.major, self.minor, self.patch + 1)


def parse_version(text: str) -> SemVer:
    """``v1.2.0`` (the ``v`` may be left out: it is added) -> SemVer; else 422."""
    match = _VERSION.fullmatch(text) if len(text) <= MAX_VERSION else None
    if match is None:
        raise _invalid("version", "a version is SemVer with a 'v' prefix, e.g. 'v1.2.0'")
    pre = match["pre"]
    return SemVer(
        int(match["major"]),
        int(match["minor"]),
        int(match["patch"]),
        tuple(pre.split(".")) if pre else (),
        match["build"],
    )


def next_version(registered: Iterable[str]) -> str:
    """GTO's default for a registration without a version (see the module docstring)."""
    versions = [parse_version(v) for v in registered]
    if not versions:
        return FIRST_VERSION
    return str(max(versions, key=SemVer.precedence).bump_patch())


def register_tag(artifact: str, version: str) -> str:
    return f"{artifact}@{version}"


def assign_tag(artifact: str, stage: str, counter: int) -> str:
    return f"{artifact}#{stage}#{counter}"


# Messages: GTO's first line, then ``key: value`` lines the view reads back.
def register_message(artifact: str, version: str, *, run_id: str, path: str) -> str:
    return f"Registering artifact {artifact} version {version}\n\nrun: {run_id}\npath: {path}\n"


def assign_message(artifact: str, stage: str, version: str, *, run_id: str | None) -> str:
    text = f"Assigning stage {stage} to artifact {artifact} version {version}\n"
    return text + (f"\nrun: {run_id}\n" if run_id else "")


def message_fields(message: str) -> dict[str, str]:
    """The ``key: value`` lines after a message's first line (``run``, ``path``)."""
    fields: dict[str, str] = {}
    for line in message.splitlines()[1:]:
        key, sep, value = line.partition(": ")
        if sep and key in ("run", "path") and key not in fields:
            fields[key] = value.strip()
    return fields


Action = Literal["register", "deregister", "assign", "unassign", "deprecate"]
EventName = Literal["registration", "deregistration", "assignment", "unassignment", "deprecation"]


@dataclass(frozen=True)
class ParsedTag:
    artifact: str
    action: Action
    version: str | None = None
    stage: str | None = None
    counter: int | None = None


def parse_tag(name: str) -> ParsedTag | None:
    """A tag name in GTO's grammar, or None for any other tag."""
    match = _TAG.fullmatch(name) if len(name) <= 512 else None
    if match is None:
        return None
    artifact = match["artifact"].replace("=", ":")
    counter = int(match["counter"]) if match["counter"] else None
    cancel = match["cancel"] == "!"
    if match["version"]:
        action: Action = "deregister" if cancel else "register"
        return ParsedTag(artifact, action, version=match["version"], counter=counter)
    if match["stage"]:
        action = "unassign" if cancel else "assign"
        return ParsedTag(artifact, action, stage=match["stage"], counter=counter)
    return ParsedTag(artifact, "deprecate", counter=counter)


def next_counter(tag_names: Iterable[str], artifact: str) -> int:
    """``n`` for the artifact's next stage tag: one more than any of its tags carries."""
    highest = 0
    for name in tag_names:
        parsed = parse_tag(name)
        if parsed and parsed.artifact == artifact and parsed.counter is not None:
            highest = max(highest, parsed.counter)
    return highest + 1


@dataclass(frozen=True)
class TagRecord:
    """An annotated tag as read from the repository."""

    name: str
    commit: str  # the commit it points at (peeled)
    created_at: datetime  # tagger date
    message: str
    tagger: str = ""
    tagger_email: str = ""


# -- the view ---------------------------------------------------------------------


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class Event(_View):
    """One registry operation (what ``gto history`` lists)."""

    tag: str
    event: EventName
    version: str | None
    stage: str | None
    commit: str
    created_at: datetime
    author: str
    author_email: str
    message: str


class StageView(_View):
    stage: str
    version: str = Field(description="The version assigned last to the stage.")
    commit: str
    tag: str = Field(description="The assignment's tag (`dvc get ... --rev <tag>`).")
    assigned_at: datetime
    run_id: str | None = None
    metrics: dict[str, JsonValue] = Field(default_factory=dict)
    get_command: str | None = None
    history: list[Event] = Field(
        default_factory=list, description="The stage's assignments, newest first."
    )


class VersionView(_View):
    version: str
    commit: str
    tag: str
    created_at: datetime
    author: str
    message: str
    active: bool = Field(description="False once deregistered.")
    path: str | None = Field(default=None, description="The artifact's path at registration.")
    stages: list[str] = Field(
        default_factory=list, description="Stages this version is the current one of."
    )
    run_id: str | None = Field(default=None, description="The run that made the commit.")
    metrics: dict[str, JsonValue] = Field(
        default_factory=dict, description="That run's metrics (flattened)."
    )
    get_command: str | None = None


class ArtifactView(_View):
    name: str
    latest: str | None = Field(description="The greatest active registered version.")
    deprecated: bool = False
    versions: list[VersionView] = Field(description="Greatest version first.")
    stages: dict[str, StageView] = Field(description="Each stage's current version.")
    history: list[Event] = Field(description="Every registry event, newest first.")


_EVENT_NAMES: dict[Action, EventName] = {
    "register": "registration",
    "deregister": "deregistration",
    "assign": "assignment",
    "unassign": "unassignment",
    "deprecate": "deprecation",
}


def _order(event: tuple[ParsedTag, TagRecord]) -> tuple[datetime, int, str]:
    parsed, record = event
    return (record.created_at, parsed.counter or 0, record.name)


def build_view(tags: Iterable[TagRecord]) -> dict[str, ArtifactView]:
    """Artifacts -> versions -> stages from the repository's annotated tags, as GTO reads
    them (``gto show`` sorting assignments by timestamp, its command-line default)."""
    by_artifact: dict[str, list[tuple[ParsedTag, TagRecord]]] = {}
    for record in tags:
        parsed = parse_tag(record.name)
        if parsed is not None:
            by_artifact.setdefault(parsed.artifact, []).append((parsed, record))
    return {
        name: _artifact(name, sorted(events, key=_order))
        for name, events in sorted(by_artifact.items())
    }


def _event(parsed: ParsedTag, record: TagRecord, version: str | None) -> Event:
    return Event(
        tag=record.name,
        event=_EVENT_NAMES[parsed.action],
        version=version,
        stage=parsed.stage,
        commit=record.commit,
        created_at=record.created_at,
        author=record.tagger,
        author_email=record.tagger_email,
        message=record.message.strip()[:MAX_MESSAGE],
    )


def _artifact(name: str, events: list[tuple[ParsedTag, TagRecord]]) -> ArtifactView:
    """``events`` oldest first."""
    registered: dict[str, tuple[ParsedTag, TagRecord]] = {}  # version -> first registration
    active: dict[str, bool] = {}
    version_of_commit: dict[str, str] = {}
    for parsed, record in events:  # versions first: an assignment may share their second
        version = str(parsed.version)
        if parsed.action == "register" and version not in registered:
            registered[version] = (parsed, record)
            version_of_commit.setdefault(record.commit, version)
        if parsed.action in ("register", "deregister") and version in registered:
            active[version] = parsed.action == "register"

    deprecated = False
    history: list[Event] = []
    # (version, stage) -> (is assigned, when its last assignment happened, its event)
    vstages: dict[tuple[str, str], tuple[bool, tuple[datetime, int, str], Event | None]] = {}
    for parsed, record in events:
        if parsed.action in ("register", "deregister"):
            if str(parsed.version) in registered:
                history.append(_event(parsed, record, parsed.version))
        elif parsed.action in ("assign", "unassign"):
            found = version_of_commit.get(record.commit)
            if found is None:
                continue  # a stage on a commit without a registered version: not ours
            event = _event(parsed, record, found)
            history.append(event)
            key = (found, str(parsed.stage))
            if parsed.action == "assign":
                vstages[key] = (True, _order((parsed, record)), event)
            elif key in vstages:
                vstages[key] = (False, vstages[key][1], None)
        else:
            deprecated = True
            history.append(_event(parsed, record, None))
    history.reverse()

    current: dict[str, tuple[tuple[datetime, int, str], str, Event]] = {}
    for (version, stage), (assigned, when, assignment) in vstages.items():
        if not assigned or not active.get(version) or assignment is None:
            continue
        if stage not in current or when > current[stage][0]:
            current[stage] = (when, version, assignment)

    stages: dict[str, StageView] = {}
    for stage in sorted(current):
        _, version, assignment = current[stage]
        stages[stage] = StageView(
            stage=stage,
            version=version,
            commit=assignment.commit,
            tag=assignment.tag,
            assigned_at=assignment.created_at,
            history=[e for e in history if e.stage == stage and e.event == "assignment"],
        )

    versions: list[VersionView] = []
    order = sorted(registered, key=lambda v: (parse_version(v).precedence(), v), reverse=True)
    for version in order:
        _, record = registered[version]
        versions.append(
            VersionView(
                version=version,
                commit=record.commit,
                tag=record.name,
                created_at=record.created_at,
                author=record.tagger,
                message=record.message.strip()[:MAX_MESSAGE],
                active=active[version],
                path=message_fields(record.message).get("path"),
                stages=[s for s, view in stages.items() if view.version == version],
            )
        )
    latest = next((v.version for v in versions if v.active), None)
    return ArtifactView(
        name=name,
        latest=latest,
        deprecated=deprecated,
        versions=versions,
        stages=stages,
        history=history,
    )
