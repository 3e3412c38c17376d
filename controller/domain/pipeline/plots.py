"""Plot definitions and artifacts: what ``dvc.yaml`` says a run's results look like.

Top-level ``plots`` (DVC 3) is a list; each entry is a data file's path, or a mapping
``{plot_id: definition}``. As in DVC's ``_resolve_definitions``:

* a definition whose ``y`` is not a mapping (a field, a list of fields, or none) makes
  the id a data file's path, and ``y`` names fields of that file;
* a ``y`` mapping ``{file: field or [fields]}`` makes the id only a name: the data files
  are its keys (and those of an ``x`` mapping, whose rows give the x values).

``x`` is a field, or ``{file: field}``. Paths are taken from the repository root (where
the service keeps ``dvc.yaml``). A later definition of an id replaces an earlier one, as
DVC reads them into one dict.

A stage's plot output is a plot too: its id is its path (the stage's ``wdir`` applied),
with the output's ``x``, ``y``, ``template`` and ``title``. When a top-level plot has
the same id, the top-level definition is the one kept.

A path may name a directory (DVCLive writes ``dvclive/plots/metrics/``). DVC lists it
when it renders; here nothing can list it before a run, so it stays one "file" whose
rows, once the run is done, say that no such file is in the run's commit.

``artifacts`` (DVC 3): ``{name: {path, type, desc, labels, meta}}``; ``meta`` is not
kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controller.domain.errors import InvalidPipeline
from controller.domain.models import ArtifactSpec, PlotSpec
from controller.domain.paths import MAX_PATH_CHARS, reserved_component
from controller.domain.pipeline.limits import Limits, over
from controller.domain.pipeline.locations import PathProblem, join_in_repo
from controller.domain.pipeline.schema import describe

__all__ = ["artifact_specs", "plot_specs", "stage_plots", "top_level_plots"]


def _fail(detail: str, stages: list[str] | None = None) -> InvalidPipeline:
    return InvalidPipeline(f"dvc.yaml: {detail}", stages=stages or [])


def top_level_plots(entries: object, warnings: list[str]) -> list[PlotSpec]:
    """The resolved top-level ``plots`` section as plot definitions, in dvc.yaml order."""
    definitions: dict[str, object] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, str):
            definitions[entry] = None
            continue
        if not isinstance(entry, Mapping):
            raise _fail(f"a top-level 'plots' entry resolved to {describe(entry)}")
        for plot_id, props in entry.items():
            if not isinstance(plot_id, str) or not plot_id:
                raise _fail(f"top-level plot id {plot_id!r} must be a non-empty string")
            definitions[plot_id] = props
    return [_top_level_plot(plot_id, props, warnings) for plot_id, props in definitions.items()]


def _top_level_plot(plot_id: str, props: object, warnings: list[str]) -> PlotSpec:
    where = f"top-level plot {_short(plot_id)!r}"
    if props is None:
        props = {}
    if not isinstance(props, Mapping):
        raise _fail(f"{where}: the definition resolved to {describe(props)}, not a mapping")
    if len(plot_id) > MAX_PATH_CHARS:
        raise _fail(f"{where}: an id longer than {MAX_PATH_CHARS} characters")
    y_def = props.get("y")
    x_def = props.get("x")
    y: dict[str, list[str]] = {}
    if isinstance(y_def, Mapping):
        for file, fields in y_def.items():
            path = _data_path(where, file)
            y[path] = [*y.get(path, []), *_fields(where, "y", fields)]
    else:
        y[_data_path(where, plot_id)] = _fields(where, "y", y_def)
    files = list(y)
    x: str | None = None
    if isinstance(x_def, Mapping):
        by_file = {_data_path(where, file): _field(where, "x", f) for file, f in x_def.items()}
        files += [path for path in by_file if path not in y]
        distinct = list(dict.fromkeys(by_file.values()))
        x = distinct[0] if distinct else None
        if len(distinct) > 1:
            warnings.append(
                f"{where}: 'x' names a different field per file ({', '.join(distinct)}); "
                f"the service reports '{x}' for every file"
            )
    elif x_def is not None:
        x = _field(where, "x", x_def)
    return PlotSpec(
        id=plot_id,
        files=files,
        x=x,
        y=y,
        template=_text(where, "template", props.get("template")),
        title=_text(where, "title", props.get("title")),
    )


def stage_plots(
    stage: str, outputs: Iterable[tuple[str, Mapping[object, object]]]
) -> list[PlotSpec]:
    """A stage's plot outputs (repo-relative path, merged options) as plot definitions."""
    specs: list[PlotSpec] = []
    for path, flags in outputs:
        where = f"stage '{stage}': plots entry {_short(path)!r}"
        try:
            y = _fields(where, "y", flags.get("y"))
            x = None if flags.get("x") is None else _field(where, "x", flags.get("x"))
            template = _text(where, "template", flags.get("template"))
            title = _text(where, "title", flags.get("title"))
        except InvalidPipeline as exc:
            raise InvalidPipeline(exc.detail, stages=[stage]) from None
        specs.append(
            PlotSpec(id=path, files=[path], x=x, y={path: y}, template=template, title=title)
        )
    return specs


def plot_specs(
    top_level: list[PlotSpec], from_stages: list[PlotSpec], limits: Limits
) -> tuple[PlotSpec, ...]:
    """Top-level plots, then stage plots whose id no top-level plot has; bounded."""
    ids = {spec.id for spec in top_level}
    specs = [*top_level, *(spec for spec in from_stages if spec.id not in ids)]
    if sum(len(spec.files) for spec in specs) > limits.plot_files:
        raise over("plot_files", limits.plot_files)
    return tuple(specs)


def artifact_specs(entries: object) -> dict[str, ArtifactSpec]:
    """The resolved ``artifacts`` section, paths repo-relative."""
    found: dict[str, ArtifactSpec] = {}
    if not isinstance(entries, Mapping):
        return found
    for name, artifact in entries.items():
        where = f"artifact {_short(str(name))!r}"
        path = artifact.get("path") if isinstance(artifact, Mapping) else None
        if not isinstance(name, str) or not name or not isinstance(path, str):
            raise _fail(f"{where} must have a string name and 'path'")
        assert isinstance(artifact, Mapping)
        labels = artifact.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise _fail(f"{where}: 'labels' must be a list of strings")
        found[name] = ArtifactSpec(
            path=_data_path(where, path),
            type=_text(where, "type", artifact.get("type")),
            desc=_text(where, "desc", artifact.get("desc")),
            labels=[str(label) for label in labels],
        )
    return found


def _data_path(where: str, path: object) -> str:
    if not isinstance(path, str):
        raise _fail(f"{where}: a file resolved to {describe(path)}, not a path")
    try:
        normalized = join_in_repo(".", path)
    except PathProblem as exc:
        raise _fail(f"{where}: {exc}") from None
    if normalized == ".":
        raise _fail(f"{where}: {path!r} is the whole repository")
    reserved = reserved_component(normalized)
    if reserved is not None:
        raise _fail(f"{where}: {reserved}")
    return normalized


def _fields(where: str, axis: str, value: object) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return list(dict.fromkeys(_field(where, axis, item) for item in values))


def _field(where: str, axis: str, value: object) -> str:
    # Interpolation may have made `${col}` a number; DVC would look for that column.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(f"{where}: '{axis}' resolved to {describe(value)}, not a field name")
    field = str(value)
    if not field or len(field) > MAX_PATH_CHARS:
        raise _fail(f"{where}: '{axis}' must be a field name of 1 to {MAX_PATH_CHARS} characters")
    return field


def _text(where: str, key: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _fail(f"{where}: '{key}' resolved to {describe(value)}, not text")


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:60] + "..."
