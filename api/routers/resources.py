"""``POST /resource/k8s/create`` and the listing, detail and deletion of provisioned workloads."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import Caller, Resources
from controller.domain.workloads import WorkloadSpec, parse_workload_spec
from controller.services.resources import Resource

router = APIRouter(tags=["resources"])


@router.post(
    "/resource/k8s/create",
    status_code=201,
    response_model=Resource,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": WorkloadSpec.model_json_schema()},
                "application/yaml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def create_resource(request: Request, caller: Caller, resources: Resources) -> Resource:
    """Provision a StatefulSet, Deployment or Job (server-side apply: posting again updates
    your own workload; a name held by another principal's workload, or by an object this
    service did not make, is 409)."""
    spec = parse_workload_spec(
        await request.body(), content_type=request.headers.get("content-type")
    )
    return await run_in_threadpool(resources.create, caller, spec)


@router.get("/resources", response_model=list[Resource])
def list_resources(
    caller: Caller, resources: Resources, namespace: str | None = None
) -> list[Resource]:
    return resources.list(caller, namespace)


@router.get("/resources/{namespace}/{kind}/{name}", response_model=Resource)
def get_resource(
    caller: Caller, resources: Resources, namespace: str, kind: str, name: str
) -> Resource:
    """Detail with readiness; ``kind`` is sts, deploy or job."""
    return resources.get(caller, namespace, kind, name)


@router.delete("/resources/{namespace}/{kind}/{name}", status_code=204)
def delete_resource(
    caller: Caller, resources: Resources, namespace: str, kind: str, name: str
) -> Response:
    resources.delete(caller, namespace, kind, name)
    return Response(status_code=204)
