"""Plays the kubelet for Job pods under kwok: runs the pod's command on this host.

kwok makes pods Running but runs no container. For pods labelled
``MANUAL_DRIVE`` the driver does what a node would: it resolves the container's
environment the way its spec says (``env`` values, ``envFrom`` Secrets, read
through the API), materialises its ConfigMap and emptyDir volumes in a host
directory, rewrites the command's mount paths to that directory, runs it, writes
its output as CRI log lines where kwok serves pod logs from, and reports the
exit code through the pod's status. With ``hold_all`` set, pods are left Running
(for deadline, cancel and restart tests) until their run is released. As a kubelet
would, it kills a pod's processes when the pod is deleted, and all of them when the
driver stops, so no test leaves a runner behind.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import MANUAL_DRIVE, Cluster, cri_log_line, finished_pod_status

RUN_LABEL = "mlexp.io/run-id"
CONFIGMAP_WAIT_SECONDS = 30.0


class JobDriver:
    def __init__(self, cluster: Cluster, api: client.ApiClient, namespace: str, root: Path) -> None:
        self.cluster = cluster
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.root = root
        self.hold_all = False
        self.released: set[str] = set()
        self.driven: dict[str, int] = {}  # pod name -> exit code
        # Called with the pod's name and exit code after its command ended, before its
        # status says so (nothing outside the pod knows it ended yet).
        self.on_exit: Callable[[str, int], None] | None = None
        self._seen: set[str] = set()
        self._children: dict[str, subprocess.Popen[str]] = {}  # pod name -> its process
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="job-driver")

    def __enter__(self) -> JobDriver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            children = list(self._children.values())
        for child in children:
            _kill(child)

    def release(self, run_id: str) -> None:
        with self._lock:
            self.released.add(run_id)
        self._sweep()

    def _loop(self) -> None:
        selector = ",".join(f"{k}={v}" for k, v in MANUAL_DRIVE.items())
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                self._sweep()
                for _ in stream.stream(
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=selector,
                    timeout_seconds=2,
                ):
                    self._sweep()
                    if self._stop.is_set():
                        break
            except (ApiException, urllib3.exceptions.HTTPError, OSError):
                self._stop.wait(0.5)  # the namespace or the cluster is going away
            finally:
                stream.stop()

    def _sweep(self) -> None:
        selector = ",".join(f"{k}={v}" for k, v in MANUAL_DRIVE.items())
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        alive = {p.metadata.name for p in pods if p.metadata.deletion_timestamp is None}
        with self._lock:
            gone = [child for name, child in self._children.items() if name not in alive]
        for child in gone:
            _kill(child)  # the pod was deleted (cancel, deadline, TTL): its container stops
        for pod in pods:
            name = pod.metadata.name
            run_id = (pod.metadata.labels or {}).get(RUN_LABEL, "")
            with self._lock:
                held = self.hold_all and run_id not in self.released
                if name in self._seen or held or pod.status.phase != "Running":
                    continue
                if pod.metadata.deletion_timestamp is not None:
                    continue
                self._seen.add(name)
            threading.Thread(target=self._drive, args=(pod,), daemon=True).start()

    def _volumes(self, pod: Any, host: Path) -> dict[str, Path]:
        """Each mount's host directory, with ConfigMap contents written into it."""
        volumes = {volume.name: volume for volume in pod.spec.volumes or []}
        mounts: dict[str, Path] = {}
        for mount in pod.spec.containers[0].volume_mounts or []:
            target = host / mount.name
            target.mkdir(parents=True, exist_ok=True)
            source = volumes[mount.name].config_map
            if source is not None:
                data = self._config_map(source.name)
                for key, text in (data or {}).items():
                    (target / key).write_text(text)
            mounts[mount.mount_path] = target
        return mounts

    def _config_map(self, name: str) -> dict[str, str] | None:
        """A ConfigMap volume's data; as a kubelet does, wait for one that does not exist yet
        (the service creates a run's ConfigMap just after its Job)."""
        deadline = time.monotonic() + CONFIGMAP_WAIT_SECONDS
        while True:
            try:
                data: dict[str, str] | None = self.core.read_namespaced_config_map(
                    name, self.namespace
                ).data
                return data
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline or self._stop.is_set():
                    raise
            time.sleep(0.2)

    def _drive(self, pod: Any) -> None:
        try:
            self._run_pod(pod)
        except ApiException as exc:
            if exc.status != 404:  # the pod, or what it references, was deleted meanwhile
                raise

    def _run_pod(self, pod: Any) -> None:
        name = pod.metadata.name
        container = pod.spec.containers[0]
        host = self.root / name
        mounts = self._volumes(pod, host)
        command = [_rewrite(arg, mounts) for arg in container.command or []]
        env = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            "HOME": os.environ.get("HOME", "/root"),
        }
        for variable in container.env or []:
            if variable.value is not None:
                env[variable.name] = variable.value
        for source in container.env_from or []:
            if source.secret_ref is not None:
                secret = self.core.read_namespaced_secret(source.secret_ref.name, self.namespace)
                env.update(
                    {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
                )
        # The container's termination message file (terminationMessagePath), as the kubelet
        # gives one: a file of the pod's, read into the status when the container ends.
        termination = host / "termination-log"
        host.mkdir(parents=True, exist_ok=True)
        termination.write_text("")
        path = container.termination_message_path or "/dev/termination-log"
        env.update({key: str(termination) for key, value in env.items() if value == path})
        started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        work = mounts.get("/work", host)
        log_path = self.cluster.log_path(self.namespace, name, container.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Line by line, as a container runtime would write it, so a follower sees it live.
        with (
            log_path.open("a") as out,
            subprocess.Popen(
                command,
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            ) as child,
        ):
            with self._lock:
                self._children[name] = child
            assert child.stdout is not None
            for line in child.stdout:
                out.write(cri_log_line(line.rstrip("\n")) + "\n")
                out.flush()
        exit_code = child.wait()
        with self._lock:
            self._children.pop(name, None)
        if self.on_exit is not None:
            self.on_exit(name, exit_code)
        status = finished_pod_status(
            {container.name: container.image},
            exit_code,
            started_at=started,
            message=termination.read_text()[:4096],
        )
        self.core.patch_namespaced_pod_status(name, self.namespace, status)
        with self._lock:
            self.driven[name] = exit_code


def _kill(child: subprocess.Popen[str]) -> None:
    """The whole process group of a pod's command, as a container's processes die with it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


def _rewrite(arg: str, mounts: dict[str, Path]) -> str:
    for mount_path, host_path in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if arg == mount_path or arg.startswith(mount_path + "/"):
            return str(host_path) + arg[len(mount_path) :]
    return arg
