"""A real Kubernetes control plane on loopback, for the cluster test tier.

`Cluster.start()` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
as local processes on free 127.0.0.1 ports, in a state directory of their own:

    <state>/pki/        CA, serving and client certificates, service-account key (openssl)
    <state>/*.kubeconfig  admin.kubeconfig (O=system:masters) and one per component
    <state>/logs/       each process's output
    <state>/pods/<namespace>/<pod>/   a pod's "filesystem": `exec` into the pod runs the
                        command on this host in that directory, and its container's log is
                        read from <container>.log there (CRI format, see `cri_log_line`)

kwok plays the kubelet for two fake nodes (stages in scripts/k8s/kwok-stages.yaml): pods
become Running and Ready, Job pods complete -- except pods labelled with `MANUAL_DRIVE`,
which stay Running until the test sets their status itself. The binaries come from
scripts/build-k8s (built once, cached outside the repository).

    with Cluster.start() as cluster:
        kubernetes.config.load_kube_config(str(cluster.kubeconfig))
        ...

Only the standard library is used (plus the openssl command), so scripts/test-cluster can run
it without the project's virtualenv. Errors: `ClusterError` (build or start-up failed);
waiting helpers raise `tests.support.waiting.WaitTimeout`.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s"
KWOK_STAGES = REPO_ROOT / "scripts" / "k8s" / "kwok-stages.yaml"

MANUAL_DRIVE = {"mlexp.io/test-drive": "manual"}
"""Label for a Job's pod template: kwok leaves the pod Running; the test completes it
(runs the command in `exec_workdir`, then patches the status with `finished_pod_status`)."""

NODE_NAMES = ("kwok-node-0", "kwok-node-1")
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0


class ClusterError(RuntimeError):
    """The binaries could not be built, or the control plane did not come up."""


# --- binaries -----------------------------------------------------------------------------


def build_binaries(*, progress: bool = False, timeout: float = 3600) -> Path:
    """Build or reuse the binaries (scripts/build-k8s); return their directory.

    With `progress`, the build's messages go to our stderr; otherwise they are kept for the
    error message.
    """
    try:
        done = subprocess.run(
            [str(BUILD_SCRIPT)],
            stdout=subprocess.PIPE,
            stderr=None if progress else subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"scripts/build-k8s did not run: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or "").splitlines()[-15:])
        raise ClusterError(f"scripts/build-k8s failed (exit {done.returncode}):\n{tail}")
    return Path(done.stdout.strip().splitlines()[-1])


# --- certificates and kubeconfigs ---------------------------------------------------------

APISERVER_SANS = (
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
    "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
)
OPENSSL_CONFIG = "[req]\ndistinguished_name = dn\n[dn]\n"  # no system defaults mixed in


def _openssl(pki: Path, *args: str) -> None:
    env = {**os.environ, "OPENSSL_CONF": str(pki / "openssl.cnf")}
    done = subprocess.run(["openssl", *args], cwd=pki, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _issue(pki: Path, name: str, subject: str, *, sans: str = "", server: bool = False) -> None:
    """An EC P-256 certificate `name`.crt/.key signed by the test CA."""
    usage = "serverAuth,clientAuth" if server else "clientAuth"
    extensions = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid:always",
        *([f"subjectAltName={sans}"] if sans else []),
    ]
    _openssl(
        pki, "req", "-x509", "-new", "-nodes", "-days", "30", "-subj", subject,
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-CA", "ca.crt", "-CAkey", "ca.key",
        *[arg for ext in extensions for arg in ("-addext", ext)],
    )  # fmt: skip


def make_pki(pki: Path) -> None:
    """CA, serving certs (apiserver; loopback components), client certs, SA signing key."""
    pki.mkdir(mode=0o700, parents=True)
    (pki / "openssl.cnf").write_text(OPENSSL_CONFIG)
    _openssl(
        pki, "req", "-x509", "-new", "-nodes", "-days", "30", "-subj", "/CN=mlexp-test-ca",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-keyout", "ca.key",
        "-out", "ca.crt", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    _issue(pki, "apiserver", "/CN=kube-apiserver", sans=APISERVER_SANS, server=True)
    # kube-controller-manager, kube-scheduler and kwok's kubelet server all serve on 127.0.0.1.
    _issue(pki, "loopback", "/CN=localhost", sans="IP:127.0.0.1,DNS:localhost", server=True)
    for user, subject in CLIENTS.items():
        _issue(pki, user, subject)
    _openssl(pki, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", "sa.key")  # fmt: skip
    _openssl(pki, "pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")


CLIENTS = {
    "admin": "/O=system:masters/CN=mlexp-admin",
    "controller-manager": "/CN=system:kube-controller-manager",
    "scheduler": "/CN=system:kube-scheduler",
    # kwok writes node and pod status for every fake node; a test-only superuser keeps it simple.
    "kwok": "/O=system:masters/CN=kwok",
    "apiserver-kubelet-client": "/O=system:masters/CN=kube-apiserver-kubelet-client",
}


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    """A kubeconfig (JSON is YAML) for `user`'s client certificate."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mlexp-test", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate": str(pki / f"{user}.crt"),
            "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "mlexp-test", "context": {"cluster": "mlexp-test", "user": user}}],
        "current-context": "mlexp-test",
    }  # fmt: skip
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# --- processes ----------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open together, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _die_with_parent() -> None:
    """Runs in the child: SIGKILL it if the test process dies without calling stop().

    KILL, not TERM: all components would get the signal at once, and a kube-apiserver whose
    etcd is already gone hangs in its graceful shutdown.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class Component:
    """One running process; its pid is also its process-group id (own session)."""

    name: str
    pid: int
    argv: list[str]
    log: str
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:  # detached: make sure the pid was not recycled by something else
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return False
        return cmdline.decode() == self.argv[0]

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the process group, wait, SIGKILL if it does not go."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not self.alive(), timeout, what=f"{self.name} to exit")
                return


def spawn(name: str, argv: Sequence[str], logs: Path, *, detached: bool) -> Component:
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if detached else _die_with_parent,
        )
    return Component(name, popen.pid, list(argv), str(log), popen)


# --- talking to the API server ------------------------------------------------------------


class AdminClient:
    """Just enough of the Kubernetes REST API to bring the cluster up (admin credentials)."""

    def __init__(self, port: int, pki: Path) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        """Return (status, decoded body); connection errors are status 0."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            raw = response.read().decode(errors="replace")
        except (OSError, http.client.HTTPException):
            return 0, None
        finally:
            conn.close()
        with contextlib.suppress(ValueError):
            return response.status, json.loads(raw)
        return response.status, raw


def https_ok(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


# --- the cluster --------------------------------------------------------------------------


@dataclass
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int  # kwok's kubelet server, which is also each fake node's kubelet port

    @classmethod
    def allocate(cls) -> Ports:
        return cls(*free_ports(len(fields(cls))))


@dataclass
class Cluster:
    """A running control plane. Use `Cluster.start()`; stop with `.stop()` or `with`."""

    state_dir: Path
    bin_dir: Path
    ports: Ports
    components: list[Component]
    remove_state: bool = True

    # -- what tests use

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def nodes(self) -> tuple[str, ...]:
        return NODE_NAMES

    def exec_workdir(self, namespace: str, pod: str) -> Path:
        """Where `exec` into the pod runs its command (kwok creates it on first exec)."""
        return self.state_dir / "pods" / namespace / pod

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        """The file kwok serves as the container's log (CRI lines, see `cri_log_line`)."""
        return self.exec_workdir(namespace, pod) / f"{container}.log"

    def write_log(self, namespace: str, pod: str, container: str, *lines: str) -> Path:
        """Append stdout lines to the container's log, as a container runtime would."""
        path = self.log_path(namespace, pod, container)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            out.writelines(cri_log_line(line) for line in lines)
        return path

    # -- lifecycle

    @classmethod
    def start(
        cls,
        state_dir: Path | None = None,
        *,
        bin_dir: Path | None = None,
        detached: bool = False,
        timeout: float = START_TIMEOUT,
    ) -> Cluster:
        """Start everything and wait until it is usable; on failure, clean up and raise.

        `state_dir` (created; must be empty) is kept after stop(); without it a temporary
        directory is used and removed. `detached` lets the processes outlive this process
        (scripts/test-cluster); otherwise they are terminated if it dies.
        """
        bin_dir = bin_dir or build_binaries()
        remove_state = state_dir is None
        state = Path(tempfile.mkdtemp(prefix="mlexp-k8s-")) if state_dir is None else state_dir
        state.mkdir(parents=True, exist_ok=True)
        if any(state.iterdir()):
            raise ClusterError(f"state directory {state} is not empty")
        cluster = cls(state.resolve(), bin_dir, Ports.allocate(), [], remove_state)
        try:
            cluster._boot(detached=detached, timeout=timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def stop(self) -> None:
        """Terminate every process (clients first, etcd last) and remove a temporary state dir."""
        for component in reversed(self.components):
            component.stop()
        self.components.clear()
        if self.remove_state and not os.environ.get("MLEXP_K8S_KEEP_STATE"):
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- persistence for scripts/test-cluster

    def to_record(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "bin_dir": str(self.bin_dir),
            "ports": asdict(self.ports),
            "components": [
                {"name": c.name, "pid": c.pid, "argv": c.argv, "log": c.log}
                for c in self.components
            ],
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Cluster:
        return cls(
            state_dir=Path(record["state_dir"]),
            bin_dir=Path(record["bin_dir"]),
            ports=Ports(**record["ports"]),
            components=[Component(**c) for c in record["components"]],
            remove_state=True,
        )

    def healthy(self) -> bool:
        """All processes alive and the API server ready."""
        context = ssl.create_default_context(cafile=str(self.state_dir / "pki" / "ca.crt"))
        ready = https_ok(f"{self.api_url}/readyz", context)
        return ready and all(c.alive() for c in self.components)

    # -- boot sequence

    def _boot(self, *, detached: bool, timeout: float) -> None:
        pki = self.state_dir / "pki"
        logs = self.state_dir / "logs"
        logs.mkdir()
        (self.state_dir / "pods").mkdir()
        make_pki(pki)
        for user in ("admin", "controller-manager", "scheduler", "kwok"):
            write_kubeconfig(self.state_dir / f"{user}.kubeconfig", self.api_url, pki, user)
        self._write_kwok_config()
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))

        def run(name: str, argv: list[str]) -> Component:
            component = spawn(name, argv, logs, detached=detached)
            self.components.append(component)
            return component

        etcd = run("etcd", self._etcd_argv())
        self._await(etcd, partial(_etcd_healthy, self.ports.etcd), timeout)
        apiserver = run("kube-apiserver", self._apiserver_argv())
        self._await(apiserver, partial(https_ok, f"{self.api_url}/readyz", context), timeout)
        # The rest only need the API server, so they start together.
        controller_manager = run("kube-controller-manager", self._controller_manager_argv())
        scheduler = run("kube-scheduler", self._scheduler_argv())
        kwok = run("kwok", self._kwok_argv())
        for component, port in [
            (controller_manager, self.ports.controller_manager),
            (scheduler, self.ports.scheduler),
            (kwok, self.ports.kwok),
        ]:
            healthz = f"https://127.0.0.1:{port}/healthz"
            self._await(component, partial(https_ok, healthz, context), timeout)
        client = AdminClient(self.ports.apiserver, pki)
        for node in NODE_NAMES:
            _create_node(client, node)
        for node in NODE_NAMES:
            self._await(kwok, partial(_node_ready, client, node), timeout)
        self._await(controller_manager, partial(_default_service_account, client), timeout)

    def _await(self, component: Component, probe: Callable[[], bool], timeout: float) -> None:
        """Wait for `probe`, failing fast (with its log) if the component dies meanwhile."""

        def check() -> bool:
            if not component.alive():
                raise ClusterError(
                    f"{component.name} exited during start-up:\n{component.log_tail()}"
                )
            return bool(probe())

        try:
            wait_for(check, timeout, what=f"{component.name} to be ready", max_interval=0.25)
        except AssertionError as exc:
            raise ClusterError(
                f"{exc}\n--- {component.name} log ---\n{component.log_tail()}"
            ) from exc

    # -- command lines

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _etcd_argv(self) -> list[str]:
        client = f"http://127.0.0.1:{self.ports.etcd}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        return [
            self._bin("etcd"),
            "--name=mlexp-test",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=mlexp-test={peer}",
            "--unsafe-no-fsync",  # throwaway data: durability buys nothing here
            "--log-level=warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        pki = self.state_dir / "pki"
        return [
            self._bin("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports.apiserver}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            # exec/logs go to kwok's kubelet server on 127.0.0.1, whose cert our CA signed
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            # a loopback address may not be an Endpoints address; nothing in-cluster needs it
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]

    def _component_serving(self, user: str, port: int) -> list[str]:
        kubeconfig = self.state_dir / f"{user}.kubeconfig"
        pki = self.state_dir / "pki"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # no front-proxy (request-header) CA to look up; only anonymous health checks come in
            "--authentication-skip-lookup",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={pki / 'loopback.crt'}",
            f"--tls-private-key-file={pki / 'loopback.key'}",
            "--leader-elect=false",
        ]

    def _controller_manager_argv(self) -> list[str]:
        pki = self.state_dir / "pki"
        return [
            self._bin("kube-controller-manager"),
            *self._component_serving("controller-manager", self.ports.controller_manager),
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
        ]

    def _scheduler_argv(self) -> list[str]:
        return [
            self._bin("kube-scheduler"),
            *self._component_serving("scheduler", self.ports.scheduler),
        ]

    def _kwok_argv(self) -> list[str]:
        pki = self.state_dir / "pki"
        key, value = KWOK_NODE_ANNOTATION
        return [
            self._bin("kwok"),
            f"--kubeconfig={self.state_dir / 'kwok.kubeconfig'}",
            f"--config={self.state_dir / 'kwok.yaml'}",
            f"--config={KWOK_STAGES}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            f"--server-address=127.0.0.1:{self.ports.kwok}",
            "--node-ip=127.0.0.1",
            f"--node-port={self.ports.kwok}",
            f"--tls-cert-file={pki / 'loopback.crt'}",
            f"--tls-private-key-file={pki / 'loopback.key'}",
            f"--cidr={POD_CIDR}",
            "--node-lease-duration-seconds=40",
        ]

    def _write_kwok_config(self) -> None:
        """ClusterExec/ClusterLogs for every pod; kwok (patched) expands the placeholders.

        No KwokConfiguration document: one given in a file is not defaulted by kwok v0.8.0
        (zero parallelism and it refuses to start), so its options are passed as flags.
        """
        pod_dir = str(self.state_dir / "pods" / "{namespace}" / "{pod}")
        documents = [
            {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterExec",
             "metadata": {"name": "pods-on-host"},
             "spec": {"execs": [{"local": {"workDir": pod_dir}}]}},
            {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterLogs",
             "metadata": {"name": "pods-on-host"},
             "spec": {"logs": [{"logsFile": f"{pod_dir}/{{container}}.log"}]}},
        ]  # fmt: skip
        text = "---\n".join(json.dumps(doc) + "\n" for doc in documents)
        (self.state_dir / "kwok.yaml").write_text(text)


# --- readiness probes ---------------------------------------------------------------------


def _etcd_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return bool(json.load(response).get("health") == "true")
    except (OSError, ValueError):
        return False


def _create_node(client: AdminClient, name: str) -> None:
    key, value = KWOK_NODE_ANNOTATION
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "type": "kwok"},
        },
    }  # fmt: skip
    status, body = client.request("POST", "/api/v1/nodes", node)
    if status not in (201, 409):
        raise ClusterError(f"creating node {name} failed: {status} {body}")


def _node_ready(client: AdminClient, name: str) -> bool:
    status, node = client.request("GET", f"/api/v1/nodes/{name}")
    if status != 200:
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _default_service_account(client: AdminClient) -> bool:
    status, _ = client.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
    return status == 200


# --- container logs -----------------------------------------------------------------------


def cri_log_line(text: str, stream: str = "stdout", at: dt.datetime | None = None) -> str:
    """One line of a CRI container log: `<RFC3339Nano time> <stream> F <text>`."""
    at = at or dt.datetime.now(dt.UTC)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
    return f"{stamp} {stream} F {text}\n"


# --- pods the test drives itself (MANUAL_DRIVE) --------------------------------------------


def finished_pod_status(
    containers: Mapping[str, str], exit_code: int, *, started_at: str, message: str = ""
) -> dict[str, Any]:
    """The pod status patch a kubelet would send when the pod's containers have exited.

    `containers` maps container names to images; times are RFC 3339. Patch it into the pod's
    status subresource; the Job controller then counts the pod as succeeded or failed.
    """
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    succeeded = exit_code == 0
    not_ready = {"status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if succeeded else "Error",
        "startedAt": started_at,
        "finishedAt": now,
        **({"message": message} if message else {}),
    }
    return {
        "status": {
            "phase": "Succeeded" if succeeded else "Failed",
            "conditions": [{"type": kind, **not_ready} for kind in ("Ready", "ContainersReady")],
            "containerStatuses": [
                {"name": name, "image": image, "imageID": "", "ready": False, "restartCount": 0,
                 "started": False, "state": {"terminated": terminated}}
                for name, image in containers.items()
            ],
        }
    }  # fmt: skip
