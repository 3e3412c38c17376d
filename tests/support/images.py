"""The project's OCI images for tests: built (or reused) by scripts/build-images, run by podman.

`build_images()` runs the build script once per session and returns the image references and
the private containers.conf podman must use. A missing prerequisite (no podman, no root for
the base image) is skipped with the reason on a laptop and fails under ``CI=true``
(`tests.support.prereqs.require`); a build that fails is always a failure.

`Container` runs one container with ``--network host`` (the tests' servers listen on
loopback), the runc runtime of that containers.conf and a name of its own, removed
(``--rm``) when it ends and killed by that name on teardown:

    images = build_images()
    with Container(images, images.workload, ["python3", "-V"]) as box:
        assert box.wait(60).returncode == 0
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import pytest

from tests.support.prereqs import require

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-images"
BUILD_TIMEOUT = 3600.0
MISSING = 2  # scripts/build-images: a prerequisite is missing
DEFAULT_SECCOMP = Path("/usr/share/containers/seccomp.json")  # podman's (containers-common)
HOSTNAME_SYSCALLS = frozenset({"sethostname", "setdomainname"})


@dataclass(frozen=True)
class Images:
    service: str
    workload: str
    containers_conf: Path
    build_seconds: float

    def env(self) -> dict[str, str]:
        """Our environment, with podman pointed at the private containers.conf."""
        return {**os.environ, "CONTAINERS_CONF": str(self.containers_conf)}

    def podman(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )


def build_images() -> Images:
    """Build or reuse the images (scripts/build-images); its progress goes to our stderr."""
    require(shutil.which("podman") is not None, "podman is not installed (apt-get install podman)")
    started = time.monotonic()
    try:
        done = subprocess.run(
            [str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"scripts/build-images did not run: {exc}", pytrace=False)
    seconds = time.monotonic() - started
    sys.stderr.write(done.stderr)  # the build's progress and times, shown with -s
    tail = "\n".join(done.stderr.splitlines()[-15:])
    if done.returncode == MISSING:
        require(False, f"the images cannot be built here:\n{tail}")
    if done.returncode != 0:
        pytest.fail(f"scripts/build-images failed (exit {done.returncode}):\n{tail}", False)
    values = dict(
        line.removeprefix("export ").split("=", 1)
        for line in done.stdout.splitlines()
        if line.startswith("export ")
    )
    return Images(
        service=values["MLEXP_SERVICE_IMAGE"],
        workload=values["MLEXP_WORKLOAD_IMAGE"],
        containers_conf=Path(values["CONTAINERS_CONF"]),
        build_seconds=seconds,
    )


def sandbox_seccomp_profile(dest: Path) -> Path:
    """podman's default seccomp profile, plus sethostname/setdomainname for every process.

    bubblewrap names each local run's UTS namespace (``--hostname``); the default profile
    allows that only with CAP_SYS_ADMIN, which the service's container does not have. The
    call changes the hostname of the caller's own UTS namespace only; every other rule of
    the default profile stays as it is.
    """
    require(DEFAULT_SECCOMP.is_file(), f"podman's seccomp profile {DEFAULT_SECCOMP} is missing")
    profile = json.loads(DEFAULT_SECCOMP.read_text())
    for rule in profile["syscalls"]:
        conditional = rule.get("includes") or rule.get("excludes")  # on capabilities
        if conditional and HOSTNAME_SYSCALLS & set(rule["names"]):
            rule["names"] = [name for name in rule["names"] if name not in HOSTNAME_SYSCALLS]
    profile["syscalls"] = [rule for rule in profile["syscalls"] if rule["names"]]
    profile["syscalls"].append({"names": sorted(HOSTNAME_SYSCALLS), "action": "SCMP_ACT_ALLOW"})
    dest.write_text(json.dumps(profile, indent=1))
    return dest


class Container:
    """``podman run --rm --network host`` of one image, in the background, its output to
    ``log`` (or kept, when no log is given, for :meth:`wait` to return)."""

    def __init__(
        self,
        images: Images,
        image: str,
        command: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        volumes: Sequence[tuple[Path, str, str]] = (),
        options: Sequence[str] = (),
        log: Path | None = None,
    ) -> None:
        self.images = images
        self.name = f"mlexp-test-{uuid.uuid4().hex[:12]}"
        argv = ["podman", "run", "--rm", "--name", self.name, "--network", "host"]
        for key, value in (env or {}).items():
            argv += ["--env", f"{key}={value}"]
        for host, inside, mode in volumes:
            argv += ["--volume", f"{host}:{inside}:{mode}"]
        self.argv = [*argv, *options, image, *command]
        self.log = log
        self._out: IO[str] | None = None
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._out = self.log.open("a") if self.log else None
        self.process = subprocess.Popen(
            self.argv,
            env=self.images.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._out or subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return self

    def wait(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """Until the container ends: its exit status, and its output when no log was given."""
        assert self.process is not None
        output, _ = self.process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.argv, self.process.returncode, output or "")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A command inside the running container (as its user)."""
        return self.images.podman("exec", self.name, *command)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.running():
            self.images.podman("kill", self.name)
            self.images.podman("rm", "--force", "--ignore", self.name)
        if self.process is not None:
            try:
                self.process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()
        if self._out is not None:
            self._out.close()
