"""Turn an interpolated stage definition into a :class:`Stage`.

Paths become repo-relative (the stage's ``wdir`` applied) and are checked:
inside the repo, not inside ``.git``/``.dvc``, and no output may be a DVC
file. A dependency may also be a URL (see :mod:`.external`); it is kept as
written. Output entries follow DVC's ``load_from_pipeline``: ``outs``, then
``metrics``, then ``plots``; one path listed twice in a section merges its
options. ``params`` follow DVC's ``_merge_params``: plain keys belong to
``params.yaml``, ``{file: [keys]}`` to ``file``, and a file given with no keys
is tracked whole (which absorbs any keys listed for it elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controller.domain.errors import InvalidPipeline
from controller.domain.paths import MAX_PATH_CHARS, reserved_component
from controller.domain.pipeline.expand import ResolvedStage
from controller.domain.pipeline.external import (
    ExternalDependency,
    UnsupportedUrl,
    external_dependency,
    redacted,
)
from controller.domain.pipeline.locations import PathProblem, is_url, join_in_repo
from controller.domain.pipeline.model import Output, OutputKind, Stage
from controller.domain.pipeline.schema import describe
from controller.domain.pipeline.sources import DEFAULT_PARAMS_FILE

__all__ = ["ParamsUse", "build_stage", "external_dependencies", "plot_outputs"]

_SECTIONS: tuple[OutputKind, ...] = ("outs", "metrics", "plots")
_DVC_FILES = ("dvc.yaml", "dvc.lock")


@dataclass(frozen=True)
class ParamsUse:
    """Parameters a stage reads from one file; ``keys is None`` means the whole file."""

    file: str
    keys: tuple[str, ...] | None


def build_stage(resolved: ResolvedStage) -> tuple[Stage, list[ParamsUse]]:
    """The stage (``params`` still empty) and the parameters it declares."""
    fields = resolved.fields
    deps = _strings(resolved, "deps")
    stage = Stage(
        name=resolved.name,
        cmd=_commands(resolved.name, fields["cmd"]),
        wdir=resolved.wdir,
        deps=tuple(_dependency(resolved, dep) for dep in deps if not is_url(dep)),
        outs=_outputs(resolved),
        params=(),
        frozen=bool(fields.get("frozen", False)),
        always_changed=bool(fields.get("always_changed", False)),
        # DVC keeps a URL as written, whatever the stage's wdir.
        external_deps=tuple(dict.fromkeys(dep for dep in deps if is_url(dep))),
    )
    return stage, _params_uses(resolved)


def external_dependencies(stage: Stage) -> list[ExternalDependency]:
    """The stage's URL dependencies, classified; refuses the ones the service cannot use."""
    found: list[ExternalDependency] = []
    for url in stage.external_deps:
        try:
            found.append(external_dependency(stage.name, url))
        except UnsupportedUrl as exc:
            raise _fail(stage.name, f"dependency {redacted(url)!r}: {exc}") from None
    return found


def _fail(name: str, detail: str) -> InvalidPipeline:
    return InvalidPipeline(f"dvc.yaml: stage '{name}': {detail}", stages=[name])


def _commands(name: str, cmd: object) -> tuple[str, ...]:
    commands = cmd if isinstance(cmd, list) else [cmd]
    for command in commands:
        # Interpolation can turn `${n}` into a number; DVC would fail to run it.
        if not isinstance(command, str):
            raise _fail(name, f"'cmd' must be text, but it resolved to {describe(command)}")
        if not command.strip():
            raise _fail(name, "'cmd' is empty")
    return tuple(str(command) for command in commands)


def _strings(resolved: ResolvedStage, field: str) -> list[str]:
    values = resolved.fields.get(field) or []
    assert isinstance(values, list)
    for value in values:
        if not isinstance(value, str):
            raise _fail(
                resolved.name, f"a '{field}' entry resolved to {describe(value)}, not a path"
            )
    return [str(value) for value in values]


def _repo_path(resolved: ResolvedStage, field: str, path: str) -> str:
    try:
        normalized = join_in_repo(resolved.wdir, path)
    except PathProblem as exc:
        if len(path) > MAX_PATH_CHARS:  # the message says so; no need to echo it all
            path = path[:60] + "..."
        raise _fail(resolved.name, f"'{field}' entry {path!r}: {exc}") from None
    if normalized == ".":
        raise _fail(resolved.name, f"'{field}' entry {path!r} is the whole repository")
    reserved = reserved_component(normalized)
    if reserved is not None:
        raise _fail(resolved.name, f"'{field}' entry {path!r}: {reserved}")
    return normalized


def _dependency(resolved: ResolvedStage, path: str) -> str:
    return _repo_path(resolved, "deps", path)


def _outputs(resolved: ResolvedStage) -> tuple[Output, ...]:
    outputs: list[Output] = []
    for kind in _SECTIONS:
        for path, flags in _merged_entries(resolved, kind).items():
            normalized = _repo_path(resolved, kind, path)
            basename = normalized.rsplit("/", 1)[-1]
            if normalized.endswith(".dvc") or basename in _DVC_FILES:
                raise _fail(resolved.name, f"DVC file '{normalized}' cannot be an output")
            outputs.append(Output(normalized, kind, flags.get("cache", True) is not False))
    return tuple(outputs)


def plot_outputs(resolved: ResolvedStage) -> list[tuple[str, Mapping[object, object]]]:
    """The stage's plot outputs: repo-relative path and merged options (x, y, template...)."""
    return [
        (_repo_path(resolved, "plots", path), flags)
        for path, flags in _merged_entries(resolved, "plots").items()
    ]


def _merged_entries(resolved: ResolvedStage, kind: str) -> dict[str, Mapping[object, object]]:
    entries = resolved.fields.get(kind) or []
    assert isinstance(entries, list)
    merged: dict[str, Mapping[object, object]] = {}
    for entry in entries:
        pairs = entry.items() if isinstance(entry, Mapping) else [(entry, {})]
        for path, flags in pairs:
            if not isinstance(path, str):
                raise _fail(resolved.name, f"a '{kind}' path resolved to {describe(path)}")
            assert isinstance(flags, Mapping)
            merged[path] = {**merged.get(path, {}), **flags}
    return merged


def _params_uses(resolved: ResolvedStage) -> list[ParamsUse]:
    entries = resolved.fields.get("params") or []
    assert isinstance(entries, list)
    whole = {
        file
        for entry in entries
        if isinstance(entry, Mapping)
        for file, keys in entry.items()
        if not keys
    }
    keys_by_file: dict[str, list[str]] = {}
    for entry in entries:
        for file, keys in _params_entry(resolved.name, entry):
            keys_by_file.setdefault(file, []).extend([] if file in whole else keys)
    return [
        ParamsUse(
            _repo_path(resolved, "params", file),
            None if file in whole else tuple(dict.fromkeys(keys)),
        )
        for file, keys in keys_by_file.items()
    ]


def _params_entry(name: str, entry: object) -> list[tuple[str, list[str]]]:
    if isinstance(entry, str):
        return [(DEFAULT_PARAMS_FILE, [entry])]
    if not isinstance(entry, Mapping):
        raise _fail(name, f"a 'params' entry resolved to {describe(entry)}, not a key")
    pairs: list[tuple[str, list[str]]] = []
    for file, keys in entry.items():
        if not isinstance(file, str) or not all(isinstance(k, str) for k in keys or []):
            raise _fail(name, f"'params' entry {file!r} must name a file and list keys")
        pairs.append((file, list(keys or [])))
    return pairs
