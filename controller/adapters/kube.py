"""The Kubernetes adapter: the only module that talks to the API server.

Objects go in and come out as plain dicts: the manifests ``planning`` builds go
out as JSON, and answers are read as JSON. The REST calls are made here, on the
kubernetes client's configured connection pool (its TLS, credentials and token
refresh), by path, rather than through its generated API classes and models:
importing those costs seconds of CPU at every start (pydantic builds a validator
for each of their thousands of methods and fields) and deserialising into them
more than the call itself once a service tracks a thousand runs. Only exec
sessions (websockets) go through ``kubernetes.stream``. Nothing typed by the
kubernetes client leaks upward. Every call passes a token bucket (the
Python client has no client-side rate limit) and is counted, read or write,
for the benchmarks, and by verb and outcome for Prometheus (``controller.metrics``).
``ApiException`` is translated here, once:

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
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config import incluster_config
from kubernetes.stream import stream
from kubernetes.stream.ws_client import (
    ERROR_CHANNEL,
    STDERR_CHANNEL,
    STDOUT_CHANNEL,
)
from websocket import WebSocketException

from controller.domain.errors import Conflict, ExternalError, InvalidInput, MlexpError, NotFound
from controller.domain.k8sconfig import SERVICE_ACCOUNT_DIR
from controller.metrics import KUBERNETES_CALLS

Obj = dict[str, Any]
"""A Kubernetes object as JSON: the one place ``Any`` is allowed, at this boundary."""

FIELD_MANAGER = "mlexp-ctrl"
# HTTP connections kept open to the API server: watches and followed logs each hold one
# for as long as they last, and launches in parallel want theirs; a pool that is too
# small discards connections and pays a TLS handshake per call under load.
CONNECTION_POOL = 64

# kind -> (API group path, resource)
_KINDS: dict[str, tuple[str, str]] = {
    "Secret": ("/api/v1", "secrets"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Pod": ("/api/v1", "pods"),
    "Service": ("/api/v1", "services"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Event": ("/api/v1", "events"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "Job": ("/apis/batch/v1", "jobs"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "Deployment": ("/apis/apps/v1", "deployments"),
}
# Seconds to connect and, for answers that are not streams, to wait for one.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0


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


class _NoCopy:
    """Takes the place of an exec session's copy of all its output (see ``exec_stream``)."""

    def write(self, data: object) -> None:
        pass


# The metric's verb for calls that are not plain requests (a pod's log is "LOG").
_VERBS = {"watch": "WATCH"}


def status_class(status: int) -> str:
    """A call's outcome for the metrics: ``ok``, or ``4xx`` / ``5xx`` (bounded labels)."""
    return "ok" if 0 < status < 400 else f"{status // 100}xx" if status else "error"


def failure_kind(exc: BaseException) -> str:
    """The outcome of a call that got no answer: ``timeout`` or ``connection``."""
    timeouts = (TimeoutError, urllib3.exceptions.TimeoutError)
    return "timeout" if isinstance(exc, timeouts) else "connection"


def translate(exc: ApiException, what: str) -> MlexpError:
    return problem(int(exc.status or 0), exc.body, exc.reason, what)


def problem(status: int, body: object, reason: object, what: str) -> MlexpError:
    """An error answer of the API server, as ours (its ``Status`` message kept)."""
    message = what
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        text = body.decode() if isinstance(body, bytes) else str(body or "{}")
        message = f"{what}: {json.loads(text).get('message') or reason}"
    if status == 404:
        return NotFound(message)
    if status == 409:
        return Conflict(message)
    if status in (400, 422):
        return InvalidInput(message)
    return ExternalError(f"{message} (Kubernetes API answered {status})")


class KubeApi:
    def __init__(
        self,
        *,
        kubeconfig: Path | None,
        context: str | None = None,
        in_cluster: bool = False,
        service_account_dir: Path | None = None,
        qps: float = 20.0,
        burst: int = 40,
    ) -> None:
        configuration = client.Configuration()
        if in_cluster:
            # KUBERNETES_SERVICE_HOST/PORT from the environment, the token and CA from the
            # service account directory; the token is read again as the kubelet rotates it.
            account = service_account_dir or SERVICE_ACCOUNT_DIR
            try:
                incluster_config.InClusterConfigLoader(
                    token_filename=str(account / "token"),
                    cert_filename=str(account / "ca.crt"),
                ).load_and_set(configuration)
            except config.ConfigException as exc:
                raise ExternalError(f"in-cluster configuration: {exc}") from None
        else:
            config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None,
                context=context,
                client_configuration=configuration,
            )
        configuration.connection_pool_maxsize = CONNECTION_POOL
        self.api_client = client.ApiClient(configuration)
        self.configuration = configuration
        self._pool = self.api_client.rest_client.pool_manager
        self._host = configuration.host.rstrip("/")
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
        verb = kind_of_call.upper()  # "exec": a websocket session, not an HTTP verb
        try:
            result = fn(*args, **kw)
        except ApiException as exc:
            KUBERNETES_CALLS.labels(verb, status_class(int(exc.status or 0))).inc()
            raise translate(exc, what) from exc
        except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:
            KUBERNETES_CALLS.labels(verb, failure_kind(exc)).inc()
            raise ExternalError(f"{what}: {type(exc).__name__}") from exc
        KUBERNETES_CALLS.labels(verb, "ok").inc()
        return result

    def _path(
        self, kind: str, namespace: str, name: str | None = None, sub: str | None = None
    ) -> str:
        group, resource = _KINDS[kind]
        path = f"{group}/namespaces/{quote(namespace, safe='')}/{resource}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
        return path + (f"/{sub}" if sub else "")

    def _request(
        self,
        kind_of_call: str,
        what: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, object] | None = None,
        body: object = None,
        content_type: str = "application/json",
        stream: bool = False,
    ) -> Any:
        """One REST call; an error answer raises (see :func:`problem`; 410 Gone on a stream raises
        :class:`Gone`). A ``stream`` answer is returned unread (the caller releases it);
        any other is read."""
        self.bucket.acquire()
        with self._calls_lock:
            self.calls[kind_of_call] += 1
        headers = {"Accept": "application/json", "User-Agent": FIELD_MANAGER}
        settings: Any = self.configuration.auth_settings()  # a token that expires: refreshed
        for setting in settings.values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[str(setting["key"])] = str(setting["value"])
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        url = self._host + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=None if stream else READ_TIMEOUT)
        verb = _VERBS.get(kind_of_call, "LOG" if path.endswith("/log") else method)
        try:
            response = self._pool.request(
                method, url, body=data, headers=headers, preload_content=not stream,
                timeout=timeout,
            )  # fmt: skip
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            KUBERNETES_CALLS.labels(verb, failure_kind(exc)).inc()
            raise ExternalError(f"{what}: {type(exc).__name__}") from exc
        KUBERNETES_CALLS.labels(verb, status_class(response.status)).inc()
        if response.status >= 400:
            error: Exception = problem(response.status, response.data, response.reason, what)
            if response.status == 410 and stream:  # a watch's resourceVersion is too old
                error = Gone(f"{what}: {response.reason}")
            response.release_conn()
            raise error
        return response

    def _json(self, kind_of_call: str, what: str, method: str, path: str, **kw: Any) -> Obj:
        """A call whose answer is a JSON object."""
        response = self._request(kind_of_call, what, method, path, **kw)
        try:
            data = json.loads(response.data)
        except ValueError as exc:
            raise ExternalError(f"{what}: the API server's answer is not JSON") from exc
        if not isinstance(data, dict):
            raise ExternalError(f"{what}: the API server's answer is not an object")
        return data

    # -- objects -----------------------------------------------------------

    def apply(self, manifest: Mapping[str, Any]) -> Obj:
        """Server-side apply: creates or updates, never duplicates."""
        kind = str(manifest["kind"])
        meta = manifest["metadata"]
        return self._json(
            "write",
            f"apply {kind} {meta['namespace']}/{meta['name']}",
            "PATCH",
            self._path(kind, meta["namespace"], meta["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=dict(manifest),
            content_type="application/apply-patch+yaml",  # JSON is YAML
        )

    def set_owner(self, kind: str, namespace: str, name: str, owner: Mapping[str, Any]) -> None:
        """Add an owner reference (a merge patch of metadata only)."""
        self._json(
            "write",
            f"set the owner of {kind} {namespace}/{name}",
            "PATCH",
            self._path(kind, namespace, name),
            body={"metadata": {"ownerReferences": [dict(owner)]}},
            content_type="application/merge-patch+json",
        )

    def create(self, manifest: Mapping[str, Any]) -> Obj:
        kind = str(manifest["kind"])
        meta = manifest["metadata"]
        return self._json(
            "write",
            f"create {kind} {meta['namespace']}/{meta['name']}",
            "POST",
            self._path(kind, meta["namespace"]),
            query={"fieldManager": FIELD_MANAGER},
            body=dict(manifest),
        )

    def server_version(self) -> str:
        """The API server's version (``GET /version``, readable by any authenticated caller):
        whether the API server answers, for readiness."""
        answer = self._json("read", "read the API server's version", "GET", "/version")
        return str(answer.get("gitVersion") or "unknown")

    def replace(self, manifest: Mapping[str, Any]) -> Obj:
        """Replace an object (PUT): refused with Conflict unless its
        ``metadata.resourceVersion`` is still the stored one."""
        kind = str(manifest["kind"])
        meta = manifest["metadata"]
        return self._json(
            "write",
            f"replace {kind} {meta['namespace']}/{meta['name']}",
            "PUT",
            self._path(kind, meta["namespace"], meta["name"]),
            query={"fieldManager": FIELD_MANAGER},
            body=dict(manifest),
        )

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self._json(
                "read", f"read {kind} {namespace}/{name}", "GET", self._path(kind, namespace, name)
            )
        except NotFound:
            return None

    def select(self, kind: str, namespace: str, selector: str) -> tuple[list[Obj], str]:
        """Objects matching a label selector, and the resourceVersion to watch from."""
        result = self._json(
            "read",
            f"list {kind} in {namespace}",
            "GET",
            self._path(kind, namespace),
            query={"labelSelector": selector},
        )
        return list(result.get("items") or []), str(result["metadata"].get("resourceVersion", ""))

    def delete(self, kind: str, namespace: str, name: str, *, foreground: bool = True) -> bool:
        """Delete; False if it was already gone."""
        try:
            self._request(
                "write",
                f"delete {kind} {namespace}/{name}",
                "DELETE",
                self._path(kind, namespace, name),
                body={"propagationPolicy": "Foreground" if foreground else "Background"},
            )
        except NotFound:
            return False
        return True

    def events_for(self, namespace: str, kind: str, name: str) -> list[Obj]:
        result = self._json(
            "read",
            f"list events of {kind} {namespace}/{name}",
            "GET",
            self._path("Event", namespace),
            query={"fieldSelector": f"involvedObject.kind={kind},involvedObject.name={name}"},
        )
        return list(result.get("items") or [])

    def watch(
        self, kind: str, namespace: str, selector: str, resource_version: str, timeout: int = 300
    ) -> Iterator[tuple[str, Obj]]:
        """Events after ``resource_version``; raises :class:`Gone` when it has expired.

        The server ends a watch after ``timeout`` seconds; the caller resumes from the
        last resourceVersion it saw.
        """
        what = f"watch {kind} in {namespace}"
        response = self._request(
            "watch",
            what,
            "GET",
            self._path(kind, namespace),
            query={
                "labelSelector": selector,
                "resourceVersion": resource_version,
                "timeoutSeconds": timeout,
                "allowWatchBookmarks": "true",
                "watch": "true",
            },
            stream=True,
        )
        try:
            for line in _lines(response):
                event = json.loads(line)
                raw = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if raw.get("code") == 410:
                        raise Gone(str(raw.get("message")))
                    raise ExternalError(f"{what}: {raw.get('message')}")
                yield str(event.get("type")), raw
        except ValueError as exc:
            raise ExternalError(f"{what}: an event that is not JSON") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ExternalError(f"{what}: {type(exc).__name__}") from exc
        finally:
            response.release_conn()

    # -- pods --------------------------------------------------------------

    def _open_exec(
        self,
        what: str,
        namespace: str,
        pod: str,
        command: list[str],
        *,
        stdin: bool,
        container: str | None,
    ) -> tuple[Any, Any]:
        """An exec session (one "exec" call) and the ApiClient it runs on; close both."""
        kwargs: dict[str, Any] = {
            "command": command,
            "stdout": True,
            "stderr": True,
            "stdin": stdin,
            "tty": False,
            "_preload_content": False,
        }
        if container:
            kwargs["container"] = container
        # kubernetes.stream swaps the ApiClient's transport for a websocket while it runs:
        # an ApiClient of its own keeps every other call (from other threads) on HTTP.
        exec_client = client.ApiClient(self.api_client.configuration)
        try:
            session = self._call(
                "exec",
                what,
                stream,
                client.CoreV1Api(exec_client).connect_get_namespaced_pod_exec,
                pod,
                namespace,
                **kwargs,
            )
        except BaseException:
            exec_client.close()
            raise
        return session, exec_client

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
        session, exec_client = self._open_exec(
            what, namespace, pod, command, stdin=stdin is not None, container=container
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

    def exec_stream(
        self,
        namespace: str,
        pod: str,
        command: list[str],
        *,
        stdin: bytes | None = None,
        container: str | None = None,
    ) -> Iterator[str]:
        """Run a command in a pod; yield its stdout as it arrives, for as long as it runs.

        Yields ``""`` after each second without output, so a caller can stop or notice
        silence. Ends when the command exits 0; raises :class:`ExternalError` when it
        exits otherwise (with the tail of its stderr) or the session breaks. Closing the
        iterator closes the session. One ``exec`` call, however long it lasts.
        """
        what = f"exec in pod {namespace}/{pod}"
        session, exec_client = self._open_exec(
            what, namespace, pod, command, stdin=stdin is not None, container=container
        )
        # The client keeps a copy of all output for read_all(), which is not used here:
        # over a whole run that copy would grow with the run's log.
        if hasattr(session, "_all"):
            session._all = _NoCopy()
        err = ""
        try:
            if stdin is not None:
                session.write_stdin(stdin.decode())
            while session.is_open():
                session.update(timeout=1)
                err = (err + session.read_channel(STDERR_CHANNEL))[-4096:]
                yield session.read_channel(STDOUT_CHANNEL)
            rest = session.read_channel(STDOUT_CHANNEL)
            if rest:
                yield rest
            err = (err + session.read_channel(STDERR_CHANNEL))[-4096:]
            closing = session.read_channel(ERROR_CHANNEL)
        except (OSError, ValueError, WebSocketException) as exc:
            raise ExternalError(f"{what}: the session broke ({type(exc).__name__})") from exc
        finally:
            session.close()
            exec_client.close()
        # The closing Status: Success, or a Failure with an ExitCode cause (or a message).
        try:
            status = json.loads(closing)
        except ValueError:
            status = None
        if not isinstance(status, dict):
            raise ExternalError(f"{what}: the session ended without an exit status")
        if status.get("status") == "Success":
            return
        details = status.get("details")
        causes = details.get("causes") if isinstance(details, dict) else None
        code = next(
            (
                str(c.get("message"))
                for c in causes or []
                if isinstance(c, dict) and c.get("reason") == "ExitCode"
            ),
            "?",
        )
        detail = err.strip() or str(status.get("message") or "")
        raise ExternalError(f"{what}: exit {code}: {detail[-300:]}")

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        response = self._request(
            "read",
            f"log of pod {namespace}/{pod}",
            "GET",
            self._path("Pod", namespace, pod, "log"),
            query={"container": container},
        )
        return bytes(response.data).decode(errors="replace")

    def follow_pod_log(self, namespace: str, pod: str) -> Iterator[bytes]:
        """The pod's log as it is written, until the container ends (``follow=true``)."""
        what = f"follow the log of pod {namespace}/{pod}"
        response = self._request(
            "read",
            what,
            "GET",
            self._path("Pod", namespace, pod, "log"),
            query={"follow": "true"},
            stream=True,
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


def _lines(response: Any) -> Iterator[bytes]:
    """The lines of a streamed response (a watch sends one JSON event per line)."""
    pending = b""
    for chunk in response.stream(64 * 1024, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if pending.strip():
        yield pending
