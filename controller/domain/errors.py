"""The one error hierarchy of mlexp-ctrl.

Services and adapters raise these; ``api/`` renders them once, as RFC 9457
problem+json, with the HTTP status from its own table. Third-party errors
(``CalledProcessError`` from git/dvc, ``ApiException``, ``ClientError``) are
translated at the adapter boundary with ``raise ... from exc`` and never leak.

    MlexpError
    ├── InvalidInput            a request that can never succeed as sent (422)
    │   ├── InvalidBundle       repo_json, hyperparameters, uploaded files
    │   ├── InvalidPipeline     dvc.yaml: schema, interpolation, cycles, outputs
    │   └── InvalidParams       run parameter overrides
    ├── PayloadTooLarge         upload over the size cap (413)
    ├── Unauthorized            missing or unknown bearer token (401)
    ├── Forbidden               namespace or resource not allowed (403)
    ├── NotFound                no such experiment / run / resource (404)
    ├── Conflict                the object's state forbids the action (409)
    ├── TooManyRequests         a per-principal quota is used up; carries retry_after (429)
    └── ExternalError           git, DVC, S3 or Kubernetes failed (502)

Messages must never carry a credential: adapters build them from redacted
values only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import ValidationError


class MlexpError(Exception):
    """Base of every error the service reports to a client."""

    title = "Error"

    def __init__(self, detail: str, *, errors: Sequence[dict[str, object]] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)


class InvalidInput(MlexpError):
    title = "Invalid input"


class InvalidBundle(InvalidInput):
    title = "Invalid experiment bundle"


class InvalidPipeline(InvalidInput):
    """dvc.yaml is not a pipeline DVC would run; ``stages`` names the stages involved."""

    title = "Invalid pipeline"

    def __init__(
        self,
        detail: str,
        *,
        stages: Sequence[str] = (),
        errors: Sequence[dict[str, object]] = (),
    ) -> None:
        super().__init__(detail, errors=errors)
        self.stages = list(stages)


class InvalidParams(InvalidInput):
    title = "Invalid parameters"


class PayloadTooLarge(MlexpError):
    title = "Payload too large"


class Unauthorized(MlexpError):
    title = "Unauthorized"


class Forbidden(MlexpError):
    title = "Forbidden"


class NotFound(MlexpError):
    title = "Not found"


class Conflict(MlexpError):
    title = "Conflict"


class TooManyRequests(MlexpError):
    """A principal's quota (active runs, request rate) is used up; try again later."""

    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail)
        # Retry-After is whole seconds; never 0, which would invite an immediate retry.
        self.retry_after = max(1, math.ceil(retry_after))


class ExternalError(MlexpError):
    """A backing system (git, DVC, S3, Kubernetes) failed; the detail is redacted."""

    title = "Backing system failed"


def validation_details(exc: ValidationError) -> list[dict[str, object]]:
    """pydantic's errors as ``{loc, msg, type}``, never with the offending input (it may be
    a credential)."""
    return [
        {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_input=False, include_url=False, include_context=False)
    ]


def summary(details: Sequence[dict[str, object]], *, empty_loc: str = "(body)") -> str:
    return "; ".join(f"{d['loc'] or empty_loc}: {d['msg']}" for d in details)
