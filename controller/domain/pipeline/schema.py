"""The shape of ``dvc.yaml`` before interpolation, as DVC 3 validates it.

DVC checks the raw file against ``dvc/schema.py`` before resolving any
``${...}``, so a field that must be a boolean cannot be written as
``${flag}``; we do the same, so what passes here is what DVC would accept.
Every problem is an :class:`InvalidPipeline` naming the stage and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from controller.domain.errors import InvalidPipeline

__all__ = [
    "OUTPUT_SECTIONS",
    "check_stage_definition",
    "check_top_level",
    "describe",
]

OUTPUT_SECTIONS = ("outs", "metrics", "plots")
TOP_LEVEL_KEYS = ("stages", "vars", "params", "metrics", "plots", "artifacts", "datasets")

_Check = Callable[[object], bool]


def describe(value: object) -> str:
    """A type name for error messages."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_anything(value: object) -> bool:
    return True


def _list_of(check: _Check) -> _Check:
    return lambda value: isinstance(value, list) and all(check(item) for item in value)


def _either(*checks: _Check) -> _Check:
    return lambda value: any(check(value) for check in checks)


def _mapping_of(check: _Check) -> _Check:
    return lambda value: (
        isinstance(value, Mapping)
        and all(isinstance(key, str) and check(item) for key, item in value.items())
    )


_STRINGS = _list_of(_is_str)
_ANNOTATION_OPTIONS: dict[str, tuple[_Check, str]] = {
    "desc": (_is_str, "a string"),
    "type": (_is_str, "a string"),
    "labels": (_STRINGS, "a list of strings"),
    "meta": (_is_anything, "anything"),
}
_OUTPUT_OPTIONS: dict[str, tuple[_Check, str]] = {
    **_ANNOTATION_OPTIONS,
    "cache": (_is_bool, "a boolean"),
    "persist": (_is_bool, "a boolean"),
    "remote": (_is_str, "a string"),
    "push": (_is_bool, "a boolean"),
    # Checkpoint outputs were removed in DVC 3, which still accepts the key and
    # ignores it; pipelines written for DVC 2 carry it (a warning, below).
    "checkpoint": (_is_bool, "a boolean"),
}
_PLOT_OPTIONS: dict[str, tuple[_Check, str]] = {
    **_OUTPUT_OPTIONS,
    "template": (_is_str, "a string"),
    "x": (_is_str, "a string"),
    "y": (_is_str, "a string"),
    "x_label": (_is_str, "a string"),
    "y_label": (_is_str, "a string"),
    "title": (_is_str, "a string"),
    "header": (_is_bool, "a boolean"),
}
_PARAMS_ENTRY = _either(_is_str, _mapping_of(_either(_STRINGS, lambda v: v is None)))
_STAGE_FIELDS: dict[str, tuple[_Check, str]] = {
    "cmd": (
        _either(_is_str, lambda v: isinstance(v, list) and bool(v) and _STRINGS(v)),
        "a string or a non-empty list of strings",
    ),
    "wdir": (_is_str, "a string"),
    "deps": (_STRINGS, "a list of strings"),
    "params": (_list_of(_PARAMS_ENTRY), "a list of keys or {file: [keys]} mappings"),
    "vars": (
        _list_of(_either(_is_str, lambda v: isinstance(v, Mapping))),
        "a list of file names or mappings",
    ),
    "frozen": (_is_bool, "a boolean"),
    "always_changed": (_is_bool, "a boolean"),
    "desc": (_is_str, "a string"),
    "meta": (_is_anything, "anything"),
    "outs": (_is_anything, "a list"),  # checked entry by entry below
    "metrics": (_is_anything, "a list"),
    "plots": (_is_anything, "a list"),
}
_PLOT_DEFINITION: dict[str, tuple[_Check, str]] = {
    "x": (_either(_is_str, _mapping_of(_is_str)), "a string or {file: column}"),
    "y": (
        _either(_is_str, _STRINGS, _mapping_of(_either(_is_str, _STRINGS))),
        "a string, a list of strings or {file: column(s)}",
    ),
    "x_label": (_is_str, "a string"),
    "y_label": (_is_str, "a string"),
    "title": (_is_str, "a string"),
    "template": (_is_str, "a string"),
}


def _fail(detail: str, stages: list[str] | None = None) -> InvalidPipeline:
    return InvalidPipeline(f"dvc.yaml: {detail}", stages=stages or [])


def check_top_level(document: object) -> Mapping[str, object]:
    """Check the sections around ``stages``; returns the stages mapping."""
    if document is None:
        raise _fail("dvc.yaml has no stages (the file is empty or holds only comments)")
    if not isinstance(document, Mapping):
        raise _fail(f"the top level must be a mapping, not {describe(document)}")
    unknown = [key for key in document if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise _fail(f"unknown top-level key {unknown[0]!r} (allowed: {', '.join(TOP_LEVEL_KEYS)})")
    _check_sections(document)
    stages = document.get("stages")
    if "stages" not in document:
        raise _fail("no 'stages' section")
    if not isinstance(stages, Mapping):
        raise _fail(f"'stages' must be a mapping of stage names, not {describe(stages)}")
    if not stages:
        raise _fail("'stages' is empty")
    bad_names = [name for name in stages if not isinstance(name, str)]
    if bad_names:
        raise _fail(f"stage name {bad_names[0]!r} must be a string")
    return stages


def _check_sections(document: Mapping[object, object]) -> None:
    sections: dict[str, tuple[_Check, str]] = {
        "vars": _STAGE_FIELDS["vars"],
        "params": (_STRINGS, "a list of file names"),
        "metrics": (_STRINGS, "a list of file names"),
        "plots": (
            _list_of(_either(_is_str, _is_plot_definition)),
            "a list of file names or {id: plot definition} mappings",
        ),
        "artifacts": (_mapping_of(_is_artifact), "a mapping of {name: {path: ...}}"),
        "datasets": (_list_of(_is_dataset), "a list of mappings with 'name' and 'type'"),
    }
    for key, (check, expected) in sections.items():
        if key in document and not check(document[key]):
            raise _fail(f"top-level '{key}' must be {expected}")


def _is_plot_definition(value: object) -> bool:
    if not isinstance(value, Mapping) or not value:
        return False
    return all(
        isinstance(key, str) and (props is None or _options_ok(props, _PLOT_DEFINITION))
        for key, props in value.items()
    )


def _is_artifact(value: object) -> bool:
    options = {**_ANNOTATION_OPTIONS, "path": (_is_str, "a string")}
    return isinstance(value, Mapping) and "path" in value and _options_ok(value, options)


def _is_dataset(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("name"), str)
        and isinstance(value.get("type"), str)
    )


def _options_ok(value: object, options: Mapping[str, tuple[_Check, str]]) -> bool:
    return isinstance(value, Mapping) and all(
        key in options and options[key][0](item) for key, item in value.items()
    )


def check_stage_definition(name: str, definition: object) -> list[str]:
    """Check one entry of ``stages`` in any of its three forms; returns warnings."""
    if not isinstance(definition, Mapping):
        raise _fail(f"stage '{name}' must be a mapping, not {describe(definition)}", [name])
    if "foreach" in definition or "do" in definition:
        return _check_foreach(name, definition)
    fields = dict(definition)
    if "matrix" in fields:
        _check_matrix(name, fields.pop("matrix"))
    return _check_fields(name, fields)


def _check_foreach(name: str, definition: Mapping[object, object]) -> list[str]:
    extra = [key for key in definition if key not in ("foreach", "do")]
    if extra:
        raise _fail(
            f"stage '{name}': {extra[0]!r} is not allowed beside foreach/do "
            "(put stage fields under 'do')",
            [name],
        )
    for required in ("foreach", "do"):
        if required not in definition:
            raise _fail(f"stage '{name}': foreach needs both 'foreach' and 'do'", [name])
    foreach = definition["foreach"]
    if not isinstance(foreach, (str, list, Mapping)):
        raise _fail(
            f"stage '{name}': 'foreach' must be a list, a mapping or a ${{...}} reference, "
            f"not {describe(foreach)}",
            [name],
        )
    template = definition["do"]
    if not isinstance(template, Mapping):
        raise _fail(f"stage '{name}': 'do' must be a mapping, not {describe(template)}", [name])
    if "matrix" in template or "foreach" in template:
        raise _fail(f"stage '{name}': foreach cannot be nested or combined with matrix", [name])
    return _check_fields(name, template)


def _check_matrix(name: str, matrix: object) -> None:
    if not isinstance(matrix, Mapping) or not matrix:
        raise _fail(f"stage '{name}': 'matrix' must be a non-empty mapping", [name])
    for key, values in matrix.items():
        if not isinstance(key, str) or not isinstance(values, (str, list)):
            raise _fail(
                f"stage '{name}': matrix entry {key!r} must be a list or a ${{...}} reference",
                [name],
            )


def _check_fields(name: str, fields: Mapping[object, object]) -> list[str]:
    for key, value in fields.items():
        if not isinstance(key, str) or key not in _STAGE_FIELDS:
            raise _fail(
                f"stage '{name}': unknown key {key!r} (allowed: {', '.join(_STAGE_FIELDS)})",
                [name],
            )
        check, expected = _STAGE_FIELDS[key]
        if not check(value):
            raise _fail(
                f"stage '{name}': '{key}' must be {expected}, not {describe(value)}", [name]
            )
    if "cmd" not in fields:
        raise _fail(f"stage '{name}' has no 'cmd'", [name])
    warnings: list[str] = []
    for section in OUTPUT_SECTIONS:
        if section in fields:
            warnings += _check_outputs(name, section, fields[section])
    return warnings


def _check_outputs(name: str, section: str, entries: object) -> list[str]:
    if not isinstance(entries, list):
        raise _fail(f"stage '{name}': '{section}' must be a list, not {describe(entries)}", [name])
    options = _PLOT_OPTIONS if section == "plots" else _OUTPUT_OPTIONS
    warnings: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            continue
        if not isinstance(entry, Mapping) or not entry:
            raise _fail(
                f"stage '{name}': each '{section}' entry must be a path or "
                f"{{path: {{options}}}}, not {describe(entry)}",
                [name],
            )
        for path, flags in entry.items():
            _check_output_flags(name, section, path, flags, options)
            if isinstance(flags, Mapping) and flags.get("checkpoint") is True:
                warnings.append(
                    f"stage '{name}': {section} entry {path!r}: 'checkpoint: true' is ignored "
                    "(DVC 3 removed checkpoint outputs; the output is tracked as usual)"
                )
    return warnings


def _check_output_flags(
    name: str, section: str, path: object, flags: object, options: Mapping[str, tuple[_Check, str]]
) -> None:
    where = f"stage '{name}': {section} entry {path!r}"
    if not isinstance(path, str):
        raise _fail(f"{where}: the path must be a string", [name])
    if not isinstance(flags, Mapping):
        raise _fail(f"{where}: options must be a mapping, not {describe(flags)}", [name])
    for key, value in flags.items():
        if not isinstance(key, str) or key not in options:
            raise _fail(f"{where}: unknown option {key!r} (allowed: {', '.join(options)})", [name])
        check, expected = options[key]
        if not check(value):
            raise _fail(f"{where}: '{key}' must be {expected}, not {describe(value)}", [name])
