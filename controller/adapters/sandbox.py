"""The local run sandbox: each local run in a bubblewrap sandbox of its own.

What a sandboxed run sees (everything else of the machine does not exist for it):

- the toolchain, read-only: ``/usr`` (and the ``/bin``, ``/lib`` links), the Python
  the service runs on and its virtualenv (dvc, the workload's packages), the
  runner, and the parts of ``/etc`` that programs need to run and to reach the
  network (certificates, name resolution, users) — not ``/etc/shadow`` and the like;
- read-write: its own work dir, and the paths the run service names for it (the
  experiment's DVC cache; its repo and DVC remote when those are local paths);
- a private ``/tmp`` and ``/var/tmp``, a minimal ``/dev``, and a ``/proc`` of its
  own PID namespace: it sees its own processes only, so no other run's
  ``/proc/<pid>/environ``, and the service's process is not there at all.

The data dir (state database, secrets, other runs' work dirs and logs), the tokens
file and the configuration are never mounted; if one of them lies inside a
toolchain path it is masked. Capabilities are dropped. The network is shared:
runs push to git and S3.

When the sandbox's first process (bubblewrap's init in the PID namespace) dies,
the kernel ends every process in the namespace, so a cancelled run cannot leave a
daemon behind. Bubblewrap is not told to die with its parent: runners outlive a
restart of the service, which adopts them again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller import runner

INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install "
    "bubblewrap), or set local.isolation: none in the server settings to run local runs "
    "unsandboxed (only with a single principal)"
)

# What of /etc a pipeline needs: TLS roots, name resolution, users and groups, the
# dynamic linker's cache, time zone, Debian's alternatives (links from /usr/bin).
ETC_ENTRIES = (
    "alternatives", "ca-certificates", "ca-certificates.conf", "crypto-policies",
    "debian_version", "gai.conf", "gitconfig", "group", "host.conf", "hostname", "hosts",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "mime.types",
    "nsswitch.conf", "os-release", "passwd", "pki", "protocols", "resolv.conf",
    "services", "ssl", "timezone",
)  # fmt: skip
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Inside the sandbox these are fresh tmpfs mounts of its own, shared with nobody.
PRIVATE_TMP = ("/tmp", "/var/tmp")  # noqa: S108


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here; the message says what to install."""


@dataclass(frozen=True)
class SandboxPlan:
    """Which host paths a run's sandbox mounts, and which it must hide."""

    workdir: Path
    writable: Sequence[Path] = ()
    readable: Sequence[Path] = ()
    hidden: Sequence[Path] = ()
    toolchain: Sequence[Path] = field(default_factory=lambda: default_toolchain())


def default_toolchain() -> list[Path]:
    """The interpreter the service runs on, its virtualenv, and the runner."""
    paths = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()]
    paths.append(Path(runner.__file__).resolve())
    return _dedupe(paths)


def bwrap_argv(plan: SandboxPlan, command: Sequence[str], *, bwrap: str = "bwrap") -> list[str]:
    """The bubblewrap command line that runs ``command`` inside the sandbox (pure)."""
    argv = [bwrap, "--ro-bind", "/usr", "/usr"]
    for name in ROOT_LINKS:
        root_entry = Path("/") / name
        if root_entry.is_symlink():
            argv += ["--symlink", str(root_entry.readlink()), str(root_entry)]
        elif root_entry.is_dir():
            argv += ["--ro-bind", str(root_entry), str(root_entry)]
    bound: list[Path] = [Path("/usr")]
    for name in ETC_ENTRIES:
        entry = Path("/etc") / name
        if entry.exists():
            argv += ["--ro-bind", str(entry), str(entry)]
            bound.append(entry)
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for tmp in PRIVATE_TMP:
        argv += ["--tmpfs", tmp]
    for path in (*plan.toolchain, *plan.readable):
        if path.exists():
            argv += ["--ro-bind", str(path), str(path)]
            bound.append(path)
    # Mask what must stay out of sight when it lies inside something mounted above;
    # the run's own writable paths are mounted after the masks, on top of them.
    for secret in plan.hidden:
        if any(_within(secret, b) for b in bound) and secret.exists():
            argv += ["--tmpfs", str(secret)] if secret.is_dir() else _mask_file(secret)
    for path in (plan.workdir, *plan.writable):
        argv += ["--bind", str(path), str(path)]
    argv += [
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", "mlexp-run", "--cap-drop", "ALL",
        "--setenv", "HOME", PRIVATE_TMP[0], "--setenv", "TMPDIR", PRIVATE_TMP[0],
        "--chdir", str(plan.workdir), "--",
    ]  # fmt: skip
    return argv + list(command)


def sandbox_path(venv_bin: str) -> str:
    """PATH inside the sandbox: the service's virtualenv first, then the system."""
    return f"{venv_bin}:{SANDBOX_PATH}"


def check_available(bwrap: str = "bwrap") -> str:
    """The bubblewrap binary, after proving that a sandbox starts here."""
    found = shutil.which(bwrap)
    if found is None:
        raise SandboxUnavailable(f"the local run sandbox needs bubblewrap (bwrap): {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="mlexp-sandbox-probe-") as probe:
        plan = SandboxPlan(workdir=Path(probe), toolchain=())
        argv = bwrap_argv(plan, ["/bin/sh", "-c", "exit 0"], bwrap=found)
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        why = proc.stderr.strip()[-300:] or f"exit {proc.returncode}"
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here ({why}); unprivileged user namespaces "
            f"may be disabled (sysctl kernel.unprivileged_userns_clone=1), or {INSTALL_HINT}"
        )
    return found


def _mask_file(path: Path) -> list[str]:
    return ["--ro-bind", "/dev/null", str(path)]


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _dedupe(paths: Iterable[Path]) -> list[Path]:
    seen: list[Path] = []
    for path in paths:
        if path not in seen and not any(_within(path, s) for s in seen):
            seen = [s for s in seen if not _within(s, path)] + [path]
    return seen
