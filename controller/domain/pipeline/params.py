"""Check that every parameter a stage declares exists in its params file.

DVC only notices a missing parameter when the stage runs; catching it at
upload time turns a failed run into a clear 422. ``params.yaml`` is the
client's hyperparameters; any other params file must be uploaded with the
bundle -- or be the output of another stage, in which case its keys can only
be checked when it exists (a warning, not an error).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from controller.domain.errors import InvalidPipeline
from controller.domain.pipeline.build import ParamsUse
from controller.domain.pipeline.limits import Budget
from controller.domain.pipeline.sources import SourceError, Sources, UnsupportedFormat

__all__ = ["resolve_params"]

_GLOB = frozenset("*?[")


def resolve_params(
    stage: str,
    uses: list[ParamsUse],
    sources: Sources,
    producer: Callable[[str], str | None],
    budget: Budget,
) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """``(file, key)`` pairs for the stage, and warnings for what cannot be checked."""
    pairs: list[tuple[str, str]] = []
    warnings: list[str] = []
    for use in uses:
        data, warning = _load(stage, use.file, sources, producer)
        if warning is not None:
            warnings.append(warning)
        if use.keys is None:
            # A whole file is one pair per key, for every stage that tracks it:
            # 10,000 stages of a foreach tracking a large params.yaml add up.
            budget.spend(nodes=len(data or {}))
            pairs.extend((use.file, str(key)) for key in (data or {}))
            continue
        budget.spend(nodes=len(use.keys))
        for key in use.keys:
            pairs.append((use.file, key))
            if data is None:
                continue
            if _GLOB & set(key):
                warnings.append(f"stage '{stage}': parameter pattern '{key}' is not checked")
            elif not _has_key(data, key):
                raise InvalidPipeline(
                    f"dvc.yaml: stage '{stage}': parameter '{key}' is not defined in '{use.file}'",
                    stages=[stage],
                )
    return tuple(pairs), warnings


def _load(
    stage: str, path: str, sources: Sources, producer: Callable[[str], str | None]
) -> tuple[Mapping[str, object] | None, str | None]:
    if not sources.exists(path):
        made_by = producer(path)
        if made_by is None:
            raise InvalidPipeline(
                f"dvc.yaml: stage '{stage}': params file '{path}' is neither params.yaml "
                "nor an uploaded file",
                stages=[stage],
            )
        return None, (
            f"stage '{stage}': params file '{path}' is written by stage '{made_by}'; "
            "its keys are not checked"
        )
    try:
        return sources.load(path), None
    except UnsupportedFormat as exc:
        return None, f"stage '{stage}': {exc}; its keys are not checked"
    except SourceError as exc:
        raise InvalidPipeline(f"dvc.yaml: stage '{stage}': {exc}", stages=[stage]) from None


def _has_key(data: Mapping[str, object], dotted: str) -> bool:
    current: object = data
    for part in dotted.split("."):
        if isinstance(current, Mapping):
            if part in current:
                current = current[part]
            elif part.lstrip("-").isdigit() and int(part) in current:
                current = current[int(part)]  # YAML lets keys be numbers
            else:
                return False
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(current) <= index < len(current):
                return False
            current = current[index]
        else:
            return False
    return True
