"""The Kubernetes adapter: the only module that talks to the API server.

Objects go in and come out as plain dicts (the manifests ``planning`` builds;
``sanitize_for_serialization`` of what the client returns), so nothing typed by
the kubernetes client leaks upward. Every call passes a token bucket (the
Python client has no client-side rate limit) and is counted, read or write,
for the benchmarks. ``ApiException`` is translated here, once:

    404 -> NotFound   409 -> Conflict   422/400 -> InvalidInput   else -> ExternalError

with the API server's ``Status`` message kept (it never holds a credential: we
never send one in a field the server would echo, only inside Secret data).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from kubernetes.stream.ws_client import (
    ERROR_CHANNEL,
    STDERR_CHANNEL,
    STDOUT_CHANNEL,
)

from controller.domain.errors import Conflict, ExternalError, InvalidInput, MlexpError, NotFound

Obj = dict[str, Any]
"""A Kubernetes object as JSON: the one place ``Any`` is allowed, at this boundary."""

FIELD_MANAGER = "mlexp-ctrl"

# kind -> (API group attribute, method suffix)
_KINDS: dict[str, tuple[str, str]] = {
    "Secret": ("core", "namespaced_secret"),
    "ConfigMap": ("core", "namespaced_config_map"),
    "Pod": ("core", "namespaced_pod"),
    "Service": ("core", "namespaced_service"),
    "PersistentVolumeClaim": ("core", "namespaced_persistent_volume_claim"),
    "Event": ("core", "namespaced_event"),
    "Job": ("batch", "namespaced_job"),
    "StatefulSet": ("apps", "namespaced_stateful_set"),
    "Deployment": ("apps", "namespaced_deployment"),
}


class TokenBucket:
    """``qps`` tokens a second, up to ``burst`` saved; ``acquire`` waits for one."""

    def __init__(self, qps: float, burst: int) -> None:
        self.rate = qps
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


@dataclass(frozen=True)
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int


class Gone(Exception):
    """A watch's resourceVersion is too old (HTTP 410): list again, then watch."""


def translate(exc: ApiException, what: str) -> MlexpError:
    message = what
    with contextlib.suppress(ValueError, TypeError):
        body = json.loads(exc.body or "{}")
        message = f"{what}: {body.get('message') or exc.reason}"
    if exc.status == 404:
        return NotFound(message)
    if exc.status == 409:
        return Conflict(message)
    if exc.status in (400, 422):
        return InvalidInput(message)
    return ExternalError(f"{message} (Kubernetes API answered {exc.status})")


class KubeApi:
    def __init__(
        self,
        *,
        kubeconfig: Path | None,
        context: str | None = None,
        in_cluster: bool = False,
        qps: float = 20.0,
        burst: int = 40,
    ) -> None:
        if in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            self.api_client = client.ApiClient(configuration)
        else:
            self.api_client = config.new_client_from_config(
                config_file=str(kubeconfig) if kubeconfig else None, context=context
            )
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.bucket = TokenBucket(qps, burst)
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    def close(self) -> None:
        self.api_client.close()

    # -- plumbing ----------------------------------------------------------

    def _call(
        self, kind_of_call: str, what: str, fn: Callable[..., Any], *args: Any, **kw: Any
    ) -> Any:
        self.bucket.acquire()
        with self._calls_lock:
            self.calls[kind_of_call] += 1
        try:
            return fn(*args, **kw)
        except ApiException as exc:
            raise translate(exc, what) from exc
        except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
            raise ExternalError(f"{what}: {type(exc).__name__}") from exc

    def _method(self, verb: str, kind: str) -> Callable[..., Any]:
        group, suffix = _KINDS[kind]
        api = getattr(self, group)
        method: Callable[..., Any] = getattr(api, f"{verb}_{suffix}")
        return method

    def _plain(self, obj: Any) -> Obj:
        data: Obj = self.api_client.sanitize_for_serialization(obj)
        return data

    # -- objects -----------------------------------------------------------

    def apply(self, manifest: Mapping[str, Any]) -> Obj:
        """Server-side apply: creates or updates, never duplicates."""
        kind = str(manifest["kind"])
        meta = manifest["metadata"]
        result = self._call(
            "write",
            f"apply {kind} {meta['namespace']}/{meta['name']}",
            self._method("patch", kind),
            meta["name"],
            meta["namespace"],
            body=dict(manifest),
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        return self._plain(result)

    def set_owner(self, kind: str, namespace: str, name: str, owner: Mapping[str, Any]) -> None:
        """Add an owner reference (a merge patch of metadata only)."""
        self._call(
            "write",
            f"set the owner of {kind} {namespace}/{name}",
            self._method("patch", kind),
            name,
            namespace,
            body={"metadata": {"ownerReferences": [dict(owner)]}},
            _content_type="application/merge-patch+json",
        )

    def create(self, manifest: Mapping[str, Any]) -> Obj:
        kind = str(manifest["kind"])
        meta = manifest["metadata"]
        result = self._call(
            "write",
            f"create {kind} {meta['namespace']}/{meta['name']}",
            self._method("create", kind),
            meta["namespace"],
            body=dict(manifest),
            field_manager=FIELD_MANAGER,
        )
        return self._plain(result)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            result = self._call(
                "read",
                f"read {kind} {namespace}/{name}",
                self._method("read", kind),
                name,
                namespace,
            )
        except NotFound:
            return None
        return self._plain(result)

    def select(self, kind: str, namespace: str, selector: str) -> tuple[list[Obj], str]:
        """Objects matching a label selector, and the resourceVersion to watch from."""
        result = self._plain(
            self._call(
                "read",
                f"list {kind} in {namespace}",
                self._method("list", kind),
                namespace,
                label_selector=selector,
            )
        )
        return list(result.get("items") or []), str(result["metadata"].get("resourceVersion", ""))

    def delete(self, kind: str, namespace: str, name: str, *, foreground: bool = True) -> bool:
        """Delete; False if it was already gone."""
        try:
            self._call(
                "write",
                f"delete {kind} {namespace}/{name}",
                self._method("delete", kind),
                name,
                namespace,
                propagation_policy="Foreground" if foreground else "Background",
            )
        except NotFound:
            return False
        return True

    def events_for(self, namespace: str, kind: str, name: str) -> list[Obj]:
        result = self._plain(
            self._call(
                "read",
                f"list events of {kind} {namespace}/{name}",
                self.core.list_namespaced_event,
                namespace,
                field_selector=f"involvedObject.kind={kind},involvedObject.name={name}",
            )
        )
        return list(result.get("items") or [])

    def watch(
        self, kind: str, namespace: str, selector: str, resource_version: str, timeout: int = 300
    ) -> Iterator[tuple[str, Obj]]:
        """Events after ``resource_version``; raises :class:`Gone` when it has expired.

        The server ends a watch after ``timeout`` seconds; the caller resumes from the
        last resourceVersion it saw.
        """
        self.bucket.acquire()
        with self._calls_lock:
            self.calls["watch"] += 1
        watcher = watch.Watch()
        try:
            for event in watcher.stream(
                self._method("list", kind),
                namespace,
                label_selector=selector,
                resource_version=resource_version,
                timeout_seconds=timeout,
                allow_watch_bookmarks=True,
            ):
                raw = event.get("raw_object") or {}
                if event.get("type") == "ERROR":
                    if raw.get("code") == 410:
                        raise Gone(str(raw.get("message")))
                    raise ExternalError(f"watch of {kind} in {namespace}: {raw.get('message')}")
                yield str(event["type"]), raw
        except ApiException as exc:
            if exc.status == 410:
                raise Gone(str(exc.reason)) from exc
            raise translate(exc, f"watch {kind} in {namespace}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ExternalError(f"watch {kind} in {namespace}: {type(exc).__name__}") from exc
        finally:
            watcher.stop()

    # -- pods --------------------------------------------------------------

    def exec(
        self,
        namespace: str,
        pod: str,
        command: list[str],
        *,
        stdin: bytes | None = None,
        container: str | None = None,
        timeout: float = 60,
    ) -> ExecResult:
        """Run a command in a pod; its output and exit code (from the error channel)."""
        what = f"exec in pod {namespace}/{pod}"
        kwargs: dict[str, Any] = {
            "command": command,
            "stdout": True,
            "stderr": True,
            "stdin": stdin is not None,
            "tty": False,
            "_preload_content": False,
        }
        if container:
            kwargs["container"] = container
        # kubernetes.stream swaps the ApiClient's transport for a websocket while it runs:
        # an ApiClient of its own keeps every other call (from other threads) on HTTP.
        exec_client = client.ApiClient(self.api_client.configuration)
        exec_core = client.CoreV1Api(exec_client)
        session = self._call(
            "exec",
            what,
            stream,
            exec_core.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            **kwargs,
        )
        out: list[str] = []
        err: list[str] = []
        try:
            if stdin is not None:
                session.write_stdin(stdin.decode())
            deadline = time.monotonic() + timeout
            while session.is_open():
                if time.monotonic() > deadline:
                    raise ExternalError(f"{what}: no answer within {timeout:.0f} s")
                session.update(timeout=1)
                out.append(session.read_channel(STDOUT_CHANNEL))
                err.append(session.read_channel(STDERR_CHANNEL))
            code = session.returncode
            status = session.read_channel(ERROR_CHANNEL)
        finally:
            session.close()
            exec_client.close()
        if code is None:
            raise ExternalError(f"{what}: no exit status ({status[:200]})")
        return ExecResult("".join(out), "".join(err), int(code))

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        result = self._call(
            "read",
            f"log of pod {namespace}/{pod}",
            self.core.read_namespaced_pod_log,
            pod,
            namespace,
            container=container,
        )
        return str(result)

    def follow_pod_log(self, namespace: str, pod: str) -> Iterator[bytes]:
        """The pod's log as it is written, until the container ends (``follow=true``)."""
        what = f"follow the log of pod {namespace}/{pod}"
        response = self._call(
            "read",
            what,
            self.core.read_namespaced_pod_log,
            pod,
            namespace,
            follow=True,
            _preload_content=False,
        )
        try:
            yield from response.stream(4096, decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ExternalError(f"{what}: {type(exc).__name__}") from exc
        finally:
            response.release_conn()

    def call_count(self) -> dict[str, int]:
        with self._calls_lock:
            return dict(self.calls)
