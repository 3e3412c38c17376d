"""A real node beside the kwok nodes: kubelet + containerd + runc joined to a test `Cluster`.

kwok only pretends to run pods; this node runs them in real containers, so what the kubelet
does (image user, mounts, `envFrom`, exit codes, logs, `exec`) is what a test sees. What it
takes on this kind of machine (cgroup v1 hybrid, no systemd, 2 cores) is written down in
docs/cluster.md ("A real node"). The pieces, under `<state>` (by default
`<cluster state>/realnode/`):

    containerd/   containerd's config, state, socket (Debian's containerd 1.6 + runc), CRI
                  with a loopback-only CNI config and a local sandbox image; its root (images,
                  layers, metadata) is kept between sessions (`claim_image_cache`) or, when
                  another node holds that, containerd/root
    kubelet/      the kubelet's config, root dir, pod logs (kubelet v1.36.4, scripts/build-k8s)
    logs/         both processes' output

The node is `realnode`, labelled and tainted `mlexp.io/real-node=true` (NoSchedule), so
nothing of the kwok tier lands on it: a pod for it carries `pod_placement()` (the
nodeSelector, the toleration, `hostNetwork: true` -- the tests' servers listen on loopback,
and the node has no pod network) and `imagePullPolicy: Never` (images come from podman,
`import_images`, never from a registry).

    with RealNode.start(cluster, images=[workload], containers_conf=conf) as node:
        ...

`stop()` cordons the node, deletes its pods, stops the kubelet, kills and deletes what is left
in containerd, stops it, kills shims and container processes that outlived it, unmounts what
is left, and checks: anything that had to be forced or is still there is a `RealNodeError`.
A few host paths the kubelet uses whatever its root dir are tidied too (`_sweep`).

Standard library only (like tests/support/cluster.py), so scripts/test-cluster can use it.
Errors: `RealNodeUnavailable` (this machine cannot run it: not root, packages missing),
`RealNodeError` (it failed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.cluster import (
    Cluster,
    Component,
    _die_with_parent,
    _issue,
    free_ports,
    spawn,
    write_kubeconfig,
)
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
PREREQ_SCRIPT = REPO_ROOT / "scripts" / "real-node"
NODE_NAME = "realnode"
REAL_NODE_LABEL = "mlexp.io/real-node"
NODE_SELECTOR = {REAL_NODE_LABEL: "true"}
TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
TOLERATIONS = [{"key": REAL_NODE_LABEL, "operator": "Equal", "value": "true",
                "effect": "NoSchedule"}]  # fmt: skip
CNI_BIN_DIR = Path("/usr/lib/cni")
PAUSE_NAME = "localhost/mlexp-pause"
BASE_NAME = "localhost/mlexp-base"  # scripts/build-images' debootstrapped base
PODMAN_ID_LABEL = "mlexp.io/podman-image-id"
# PID 1 of every pod sandbox; runc SIGKILLs it when the sandbox stops.
PAUSE_CONTAINERFILE = 'USER 0:0\nWORKDIR /\nENTRYPOINT []\nCMD ["sleep", "infinity"]\n'
START_TIMEOUT = 180.0
# The kubelet sets these (setupKernelTunables, protectKernelDefaults off); put back when the
# last kubelet on the machine stops.
KERNEL_TUNABLES = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops")  # fmt: skip
# Fixed paths the kubelet uses whatever its root dir: log symlinks, the device-plugin socket.
HOST_CONTAINER_LOGS = Path("/var/log/containers")
DEVICE_PLUGIN_SOCKET = Path("/var/lib/kubelet/device-plugins/kubelet.sock")


class RealNodeError(RuntimeError):
    """The real node did not start, or did not stop cleanly."""


class RealNodeUnavailable(RealNodeError):
    """This machine cannot run a real node (not root, or containerd/runc/CNI missing)."""


def missing_prerequisites() -> list[str]:
    """What keeps a real node from running here (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("a real node needs root (containerd, runc, mounts)")
    for tool in ("containerd", "ctr", "runc", "podman"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} is not installed")
    if not os.access(CNI_BIN_DIR / "loopback", os.X_OK):
        missing.append(f"no CNI loopback plugin in {CNI_BIN_DIR} (containernetworking-plugins)")
    return missing


def ensure_prerequisites() -> None:
    """Install what is missing (scripts/real-node: apt-get, as root), or raise Unavailable."""
    if missing_prerequisites() and os.geteuid() == 0:
        subprocess.run([str(PREREQ_SCRIPT)], check=False, stdout=subprocess.DEVNULL)
    missing = missing_prerequisites()
    if missing:
        raise RealNodeUnavailable("; ".join(missing))


def pod_placement() -> dict[str, Any]:
    """The pod spec fields that put a pod on the real node (and only there)."""
    return {
        "nodeSelector": dict(NODE_SELECTOR),
        "tolerations": [dict(t) for t in TOLERATIONS],
        "hostNetwork": True,
    }


# --- configuration files ------------------------------------------------------------------


def containerd_config(state: Path, root: Path, sandbox_image: str) -> str:
    """containerd 1.6 config (version 2): everything private to `state`, but for `root`
    (images, snapshots, metadata), which may be kept between sessions (`claim_image_cache`).

    restrict_oom_score_adj: runc's oom_score_adj writes are denied here, and without it every
    container fails with "can't get final child's PID from pipe".
    """
    cd = state / "containerd"
    return f"""\
version = 2
root = "{root}"
state = "{cd / "state"}"
oom_score = 0

[grpc]
  address = "{cd / "containerd.sock"}"

[ttrpc]
  address = "{cd / "containerd.sock.ttrpc"}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{cd / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{cd / "runc"}"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cd / "cni"}"
  max_conf_num = 1
"""


# Network "ready" without a pod network: pods use hostNetwork; others get loopback only.
LOOPBACK_CONFLIST = {"cniVersion": "1.0.0", "name": "mlexp-loopback",
                     "plugins": [{"type": "loopback"}]}  # fmt: skip


def kubelet_config(state: Path, pki: Path, port: int, healthz_port: int) -> dict[str, Any]:
    """The KubeletConfiguration for this machine (cgroup v1, no systemd, no swap rules).

    The kubelet serves on loopback only, with the cluster CA's certificate for 127.0.0.1
    (the API server verifies it), and only to clients with a certificate of that CA (the API
    server's kubelet client cert); such a client may do anything.
    """
    kubelet = state / "kubelet"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "realnode-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "realnode-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{state / 'containerd' / 'containerd.sock'}",
        "podLogsDir": str(kubelet / "pod-logs"),
        "volumePluginDir": str(kubelet / "volume-plugins"),
        "registerWithTaints": [TAINT],
        "serializeImagePulls": False,
        "resolvConf": "/etc/resolv.conf",
    }


# --- images -------------------------------------------------------------------------------


def _run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120,
         stdin: Any = None) -> str:  # fmt: skip
    try:
        done = subprocess.run(list(argv), env=env, stdin=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RealNodeError(f"{argv[0]} did not run: {exc}") from exc
    if done.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _podman_env(containers_conf: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if containers_conf is not None:
        env["CONTAINERS_CONF"] = str(containers_conf)
    return env


def _layers(image: str, env: Mapping[str, str]) -> list[str]:
    out = _run(["podman", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image],
               env=env)  # fmt: skip
    return list(json.loads(out) or [])


def sandbox_image(images: Sequence[str], containers_conf: Path | None) -> str:
    """A local pause image: the images' base (else the first image) + `sleep infinity`.

    containerd's default (registry.k8s.io/pause) would need a registry. Built FROM the base
    the workload image starts with, it shares that layer in containerd and adds none.
    """
    if not images:
        raise RealNodeError("a sandbox image needs at least one image to start from")
    env = _podman_env(containers_conf)
    first = _layers(images[0], env)
    parent = images[0]
    refs = _run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}",
                 "--filter", f"reference={BASE_NAME}"], env=env).split()  # fmt: skip
    for ref in refs:
        layers = _layers(ref, env)
        if layers and first[: len(layers)] == layers:
            parent = ref
            break
    parent_id = _run(["podman", "image", "inspect", "--format", "{{.Id}}", parent], env=env)
    containerfile = (
        f'FROM {parent}\nUSER 0:0\nWORKDIR /\nENTRYPOINT []\nCMD ["sleep", "infinity"]\n'
    )
    tag = f"{PAUSE_NAME}:" + hashlib.sha256((parent_id + containerfile).encode()).hexdigest()[:16]
    exists = subprocess.run(["podman", "image", "exists", tag], env=env, check=False)
    if exists.returncode != 0:
        with tempfile.TemporaryDirectory(prefix="mlexp-pause-") as context:
            Path(context, "Containerfile").write_text(containerfile)
            _run(["podman", "build", "--pull=never", "--network", "host", "-t", tag, context],
                 env=env, timeout=300)  # fmt: skip
    return tag


# --- mounts and processes -----------------------------------------------------------------


def _unescape(path: str) -> str:
    return path.encode().decode("unicode_escape") if "\\" in path else path


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return [b""]


def _is_kubelet(pid: int) -> bool:
    return os.path.basename(_argv(pid)[0]) == b"kubelet"


def shims_of(address: Path) -> list[int]:
    """Pids of containerd shims that serve the containerd at `address`."""
    return [
        pid
        for pid in _pids()
        if b"containerd-shim" in (argv := _argv(pid))[0] and str(address).encode() in argv
    ]


def _container_cgroups(namespace: str, container: str, *tail: str) -> list[Path]:
    """A container's cgroup in every hierarchy (cgroupfs driver, no cgroup parent)."""
    name = Path(namespace, container, *tail)
    root = Path("/sys/fs/cgroup")
    return [*root.glob(str(Path("*") / name)), *root.glob(str(name))]


def image_cache() -> Path:
    default = Path.home() / ".cache" / "mlexp-ctrl" / "realnode"
    return Path(os.environ.get("MLEXP_REAL_NODE_CACHE") or default).expanduser()


def claim_image_cache() -> tuple[Path, int] | None:
    """containerd's root kept between sessions (imported images survive: no ~60 s import),
    for one node at a time: (root, the fd holding its lock), or None if another node has it.

    The lock goes to containerd (`spawn_holding`), so it lasts exactly as long as containerd
    and its shims, also for a node started by scripts/test-cluster.
    """
    cache = image_cache()
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return cache / "containerd-root", fd


def spawn_holding(
    name: str, argv: Sequence[str], logs: Path, *, detached: bool, fd: int | None
) -> Component:
    """`tests.support.cluster.spawn`, the child inheriting `fd` (a lock it holds)."""
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if detached else _die_with_parent,
            pass_fds=() if fd is None else (fd,),
        )
    return Component(name, popen.pid, list(argv), str(log), popen)


def _tunables_file() -> Path:
    return image_cache() / "kernel-tunables.json"


def save_kernel_tunables() -> None:
    """Before a kubelet starts: the machine's values, unless a kubelet (ours or another
    session's) has already saved them -- then the kernel holds the kubelet's by now."""
    saved = _tunables_file()
    if saved.exists():
        return
    saved.parent.mkdir(parents=True, exist_ok=True)
    values = {name: Path("/proc/sys", name).read_text().strip() for name in KERNEL_TUNABLES}
    saved.write_text(json.dumps(values) + "\n")


def restore_kernel_tunables() -> None:
    """When no kubelet runs any more: put the saved values back."""
    saved = _tunables_file()
    with contextlib.suppress(OSError, ValueError):
        for name, value in json.loads(saved.read_text()).items():
            if name in KERNEL_TUNABLES:
                Path("/proc/sys", name).write_text(str(value))
        saved.unlink()


# --- the node -----------------------------------------------------------------------------


@dataclass
class RealNode:
    """A kubelet node of `cluster`. Use `RealNode.start()`; stop with `.stop()` or `with`."""

    cluster: Cluster
    state_dir: Path
    name: str = NODE_NAME
    components: list[Component] = field(default_factory=list)
    containers_conf: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    containerd_root: Path | None = None
    images: list[str] = field(default_factory=list)  # imported at start, in the order given

    @property
    def socket(self) -> Path:
        return self.state_dir / "containerd" / "containerd.sock"

    @property
    def pod_logs_dir(self) -> Path:
        return self.state_dir / "kubelet" / "pod-logs"

    @property
    def workload_image(self) -> str:
        """The first image the node was started with (the fixture's: the workload image)."""
        return self.images[0]

    @property
    def node_selector(self) -> dict[str, str]:
        return dict(NODE_SELECTOR)

    @property
    def tolerations(self) -> list[dict[str, str]]:
        return [dict(t) for t in TOLERATIONS]

    # -- lifecycle

    @classmethod
    def start(
        cls,
        cluster: Cluster,
        *,
        images: Sequence[str] = (),
        containers_conf: Path | None = None,
        state_dir: Path | None = None,
        detached: bool = False,
        timeout: float = START_TIMEOUT,
    ) -> RealNode:
        """Start containerd and the kubelet, import `images` (podman references), wait Ready.

        `images` must name at least one image (the sandbox image is built from its base).
        `detached` lets the processes outlive this one (scripts/test-cluster).
        """
        ensure_prerequisites()
        state = (state_dir or cluster.state_dir / "realnode").resolve()
        state.mkdir(parents=True, exist_ok=True)
        if any(state.iterdir()):
            raise RealNodeError(f"state directory {state} is not empty")
        node = cls(cluster, state, containers_conf=containers_conf)
        try:
            node._boot(list(images), detached=detached, timeout=timeout)
        except BaseException:
            with contextlib.suppress(RealNodeError):
                node.stop()
            raise
        return node

    def __enter__(self) -> RealNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _boot(self, images: list[str], *, detached: bool, timeout: float) -> None:
        started = time.monotonic()
        pki = self.cluster.state_dir / "pki"
        logs = self.state_dir / "logs"
        for sub in ("logs", "containerd/cni", "kubelet/pod-logs", "kubelet/volume-plugins"):
            (self.state_dir / sub).mkdir(parents=True)
        # The kubelet acts as the node (Node authorizer, NodeRestriction), as on a real cluster.
        _issue(pki, "realnode-kubelet", f"/O=system:nodes/CN=system:node:{self.name}")
        _issue(pki, "realnode-serving", f"/CN=system:node:{self.name}",
               sans=f"IP:127.0.0.1,DNS:{self.name},DNS:localhost", server=True)  # fmt: skip
        kubeconfig = self.state_dir / "kubelet" / "kubeconfig"
        write_kubeconfig(kubeconfig, self.cluster.api_url, pki, "realnode-kubelet")

        pause = sandbox_image(images, self.containers_conf)
        cd = self.state_dir / "containerd"
        claimed = claim_image_cache()
        lock = None
        if claimed is None:  # another node uses the cache: a root of our own, images copied in
            self.containerd_root = cd / "root"
        else:
            self.containerd_root, lock = claimed
        config = containerd_config(self.state_dir, self.containerd_root, pause)
        (cd / "config.toml").write_text(config)
        (cd / "cni" / "10-loopback.conflist").write_text(json.dumps(LOOPBACK_CONFLIST) + "\n")
        argv = [shutil.which("containerd") or "containerd", "--config", str(cd / "config.toml")]
        try:
            containerd = spawn_holding("containerd", argv, logs, detached=detached, fd=lock)
        finally:
            if lock is not None:
                os.close(lock)  # containerd holds it now, for as long as it (or a shim) lives
        self.components.append(containerd)
        self._await(containerd, self._containerd_up, timeout, "containerd to serve")
        self.timings["containerd"] = time.monotonic() - started
        problems = self._clear_containerd()  # what a killed session left in the cached root
        if problems:
            raise RealNodeError("; ".join(problems))

        # The images go in while the kubelet registers (containerd is busy either way).
        imported: list[BaseException] = []

        def import_all() -> None:
            try:
                self.import_images(pause, *images)
                self._prune_images(keep={pause, *images})
            except BaseException as exc:  # handed to the main thread
                imported.append(exc)

        importer = threading.Thread(target=import_all, name="realnode-images")
        importer.start()
        try:
            self._start_kubelet(kubeconfig, logs, detached=detached, timeout=timeout)
        finally:
            importer.join()
        if imported:
            raise imported[0]
        self.images = list(images)
        self.timings["ready"] = time.monotonic() - started

    def _start_kubelet(self, kubeconfig: Path, logs: Path, *, detached: bool,
                       timeout: float) -> None:  # fmt: skip
        kubelet_port, healthz_port = free_ports(2)
        config = kubelet_config(self.state_dir, self.cluster.state_dir / "pki",
                                kubelet_port, healthz_port)  # fmt: skip
        config_path = self.state_dir / "kubelet" / "config.json"  # JSON is YAML
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        save_kernel_tunables()
        argv = [
            str(self.cluster.bin_dir / "kubelet"),
            f"--config={config_path}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.state_dir / 'kubelet' / 'root'}",
            f"--hostname-override={self.name}",
            # A loopback node IP fails the kubelet's own address check, so it leaves
            # status.addresses alone; we set them below, and the API server reaches us there.
            "--node-ip=127.0.0.1",
            f"--node-labels={REAL_NODE_LABEL}=true",
            "--v=1",
        ]
        started = time.monotonic()
        kubelet = spawn("kubelet", argv, logs, detached=detached)
        self.components.append(kubelet)
        self._await(kubelet, lambda: self._node() is not None, timeout, "the node to register")
        addresses = {"status": {"addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": self.name}]}}  # fmt: skip
        self.kubectl("patch", "node", self.name, "--subresource=status", "--type=merge",
                     "-p", json.dumps(addresses))  # fmt: skip
        self._await(kubelet, self._ready, timeout, f"node {self.name} to be Ready")
        self.timings["kubelet"] = time.monotonic() - started

    def stop(self) -> None:
        """Take everything down; raise RealNodeError if something had to be forced or is left."""
        problems: list[str] = []
        api_up = self.cluster.healthy()
        if api_up and self._node() is not None:
            problems += self._drain()
        for component in reversed(self.components):
            if component.name == "containerd" and component.alive():
                problems += self._clear_containerd()
            component.stop()
        self.components.clear()
        problems += self._sweep()
        if api_up:
            with contextlib.suppress(RealNodeError):
                self.kubectl("delete", "node", self.name, "--ignore-not-found", "--wait=false")
        if problems:
            raise RealNodeError("the real node did not stop cleanly:\n  " + "\n  ".join(problems))

    def _drain(self) -> list[str]:
        """Cordon (so controllers cannot put pods back) and delete every pod on the node."""
        selector = f"--field-selector=spec.nodeName={self.name}"
        dead = [c.name for c in self.components if not c.alive()]
        try:
            self.kubectl("cordon", self.name)
            if dead:  # nobody would confirm a graceful deletion
                raise RealNodeError(f"{' and '.join(dead)} had exited")
            # A short grace: this is teardown, and a PID 1 that ignores SIGTERM (sleep) would
            # hold every pod for the default 30 s.
            self.kubectl("delete", "pods", "--all-namespaces", selector, "--grace-period=2",
                         "--wait=true", "--timeout=60s", timeout=90)  # fmt: skip
        except RealNodeError as exc:
            with contextlib.suppress(RealNodeError):
                self.kubectl("delete", "pods", "--all-namespaces", selector, "--force",
                             "--grace-period=0")  # fmt: skip
            return [f"pods on the node were not deleted in time: {exc}"]
        return []

    def _ctr(self, *args: str, namespace: str = "k8s.io", timeout: float = 60) -> str:
        argv = ["ctr", "--address", str(self.socket), "--namespace", namespace, *args]
        return _run(argv, timeout=timeout)

    def _clear_containerd(self) -> list[str]:
        """Kill and delete every task and container, in every namespace (a task's shim would
        outlive containerd otherwise); report any that would not go.

        After a drain only stopped sandboxes and exited containers are normally left, which
        the kubelet had not collected yet.
        """
        left = []
        try:
            for ns in self._ctr("namespaces", "ls", "-q").split():
                tasks = self._ctr("tasks", "ls", "-q", namespace=ns).split()
                for verb in (["kill", "--signal", "SIGKILL"], ["delete", "--force"]):
                    for task in tasks:
                        with contextlib.suppress(RealNodeError):
                            self._ctr("tasks", *verb, task, namespace=ns)
                for container in self._ctr("containers", "ls", "-q", namespace=ns).split():
                    with contextlib.suppress(RealNodeError):
                        self._ctr("containers", "delete", container, namespace=ns)
                left += self._ctr("tasks", "ls", "-q", namespace=ns).split()
                left += self._ctr("containers", "ls", "-q", namespace=ns).split()
        except RealNodeError as exc:
            return [f"containerd could not be cleared: {exc}"]
        return [f"containers left in containerd: {', '.join(sorted(set(left)))}"] if left else []

    def _sweep(self) -> list[str]:
        """After both processes are gone: shims, mounts, kernel tunables, log symlinks."""
        problems = []
        shims = shims_of(self.socket)
        if shims:
            problems.append(f"containerd shims were left running (killed): pids {shims}")
            for pid in shims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not shims_of(self.socket), 10, what="shims to exit")
        orphans = self._orphans()
        if orphans:  # their shims died (killed above, or with a killed containerd)
            problems.append(f"container processes were left running (killed): {orphans}")
            self._kill_orphans()
        roots = [self.state_dir, *([self.containerd_root] if self.containerd_root else [])]
        for point in [point for root in roots for point in mounts_under(root)]:
            done = subprocess.run(["umount", point], capture_output=True, check=False)
            if done.returncode != 0:
                subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        left = [point for root in roots for point in mounts_under(root)]
        if left:
            problems.append(f"mounts left: {left}")
        if shims_of(self.socket):
            problems.append(f"shims still running: {shims_of(self.socket)}")
        if not any(_is_kubelet(pid) for pid in _pids()):  # the last kubelet here is gone
            restore_kernel_tunables()
            DEVICE_PLUGIN_SOCKET.unlink(missing_ok=True)  # a fixed path, whatever the root dir
        with contextlib.suppress(OSError):
            for link in HOST_CONTAINER_LOGS.iterdir():
                if link.is_symlink() and str(self.pod_logs_dir) in os.readlink(link):
                    link.unlink()
        return problems

    def _orphans(self) -> dict[str, list[int]]:
        """Processes of our containers whose shim is gone: container id -> pids.

        The container ids are the task bundle dirs in our state dir (removed when a task is
        deleted); runc put each container in cgroup .../k8s.io/<id> of every hierarchy.
        """
        bundles = self.state_dir / "containerd" / "state" / "io.containerd.runtime.v2.task"
        found = {}
        for bundle in bundles.glob("*/*"):
            pids: set[int] = set()
            for procs in _container_cgroups(bundle.parent.name, bundle.name, "cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(pid) for pid in procs.read_text().split())
            if pids:
                found[bundle.name] = sorted(pids)
        return found

    def _kill_orphans(self) -> None:
        for pids in self._orphans().values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self._orphans(), 10, what="container processes to exit")
        bundles = self.state_dir / "containerd" / "state" / "io.containerd.runtime.v2.task"
        for bundle in bundles.glob("*/*"):
            for cgroup in _container_cgroups(bundle.parent.name, bundle.name):
                with contextlib.suppress(OSError):
                    cgroup.rmdir()

    # -- images

    def import_images(self, *images: str) -> None:
        """Copy podman images into containerd's k8s.io namespace (unless already there).

        An image is imported again only if its podman id differs from the one recorded in a
        label at its last import.
        """
        env = _podman_env(self.containers_conf)
        started = time.monotonic()
        for image in dict.fromkeys(images):
            image_id = _run(["podman", "image", "inspect", "--format", "{{.Id}}", image],
                            env=env).strip()  # fmt: skip
            if self._imported_id(image) == image_id:
                continue
            save = subprocess.Popen(
                ["podman", "save", "--format", "docker-archive", image],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                _run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", "images",
                      "import", "-"], stdin=save.stdout, timeout=600)  # fmt: skip
            finally:
                assert save.stdout is not None
                save.stdout.close()
                _, err = save.communicate(timeout=60)
            if save.returncode != 0:
                raise RealNodeError(f"podman save {image} failed: {err.decode().strip()}")
            self._ctr("images", "label", image, f"{PODMAN_ID_LABEL}={image_id}")
        self.timings["images"] = self.timings.get("images", 0.0) + time.monotonic() - started

    def _prune_images(self, keep: set[str]) -> None:
        """Drop images of ours from earlier sessions (containerd then frees their layers)."""
        for image in self._ctr("images", "ls", "-q").split():
            if image.startswith("localhost/mlexp-") and image not in keep:
                self._ctr("images", "rm", image)

    def _imported_id(self, image: str) -> str | None:
        out = self._ctr("images", "ls", f"name=={image}")
        for line in out.splitlines()[1:]:
            for label in line.split()[-1].split(","):
                key, _, value = label.partition("=")
                if key == PODMAN_ID_LABEL:
                    return value
        return None

    # -- state

    def kubectl(self, *args: str, timeout: float = 60) -> str:
        argv = [str(self.cluster.kubectl), f"--kubeconfig={self.cluster.kubeconfig}", *args]
        return _run(argv, timeout=timeout)

    def _node(self) -> dict[str, Any] | None:
        try:
            out = self.kubectl("get", "node", self.name, "--ignore-not-found", "-o", "json")
        except RealNodeError:
            return None
        return json.loads(out) if out.strip() else None

    def _ready(self) -> bool:
        node = self._node() or {}
        conditions = node.get("status", {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _containerd_up(self) -> bool:
        try:
            _run(["ctr", "--address", str(self.socket), "version"], timeout=10)
        except RealNodeError:
            return False
        return True

    def healthy(self) -> bool:
        return bool(self.components) and all(c.alive() for c in self.components) and self._ready()

    def _await(self, component: Component, probe: Any, timeout: float, what: str) -> None:
        def check() -> bool:
            if not component.alive():
                raise RealNodeError(f"{component.name} exited:\n{component.log_tail()}")
            return bool(probe())

        try:
            wait_for(check, timeout, what=what, max_interval=0.5)
        except AssertionError as exc:
            raise RealNodeError(f"{exc}\n--- {component.name} log ---\n"
                                f"{component.log_tail(30)}") from exc  # fmt: skip

    # -- persistence for scripts/test-cluster

    def to_record(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "name": self.name,
            "containers_conf": str(self.containers_conf) if self.containers_conf else None,
            "containerd_root": str(self.containerd_root) if self.containerd_root else None,
            "images": self.images,
            "components": [
                {"name": c.name, "pid": c.pid, "argv": c.argv, "log": c.log}
                for c in self.components
            ],
        }

    @classmethod
    def from_record(cls, cluster: Cluster, record: Mapping[str, Any]) -> RealNode:
        conf, root = record.get("containers_conf"), record.get("containerd_root")
        return cls(
            cluster=cluster,
            state_dir=Path(record["state_dir"]),
            name=record["name"],
            components=[Component(**c) for c in record["components"]],
            containers_conf=Path(conf) if conf else None,
            containerd_root=Path(root) if root else None,
            images=list(record.get("images") or []),
        )
