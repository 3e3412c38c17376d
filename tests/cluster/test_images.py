"""The project's OCI images, built by scripts/build-images and run with podman.

Covers: the workload image (workload_example/Dockerfile) runs the runner the way a Job's
container does — the runner and its spec mounted read-only at the ConfigMap's mount point, the
credentials as an env file (the Secret's envFrom), the git server's private CA mounted, an
empty work dir — against the HTTPS git server and S3, as uid 1000; the run branch it publishes
is cloned and its model pulled as a client would. The service image (deploy/Dockerfile) runs
`mlexp serve` as uid 10001 on a read-only root with only /data and a tmpfs /tmp writable,
behind a tokens file, and completes a sandboxed local run of the sample bundle over HTTP.

The images are built once per machine (reused while their inputs are unchanged); the build's
time is printed. Both containers use the host's network: the test servers are on loopback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from controller import runner
from controller.adapters.store import Store
from controller.domain.bundle import RepoSpec
from controller.domain.models import Experiment, Run, RunState
from controller.planning.manifests.runs import RUN_WORKDIR, RUNNER_COMMAND, RUNNER_MOUNT
from controller.planning.runs import credential_env, runner_spec
from controller.settings import Settings
from tests.cluster.test_service_k8s import TOKEN, remote_repo
from tests.support.bundles import clone_run, create, sample_parts
from tests.support.gitserver import GitHttpServer
from tests.support.images import Container, Images, build_images, sandbox_seccomp_profile
from tests.support.s3server import S3Server
from tests.support.service import free_port, service_in_thread
from tests.support.waiting import wait_for

WORKLOAD_UID = 1000  # workload_example/Dockerfile; the Job's securityContext expects it
SERVICE_UID = 10001  # deploy/Dockerfile; the Helm chart's runAsUser
CA_MOUNT = "/etc/mlexp-ca"
RUN_TIMEOUT = 240.0
# A cold build (debootstrap, then both images) takes ~9 minutes on 2 CPUs, in the first
# test's setup: over pytest's default 600 s. The tests themselves wait RUN_TIMEOUT at most.
pytestmark = pytest.mark.timeout(2400)
# The run Job's securityContext: no privilege escalation, no capabilities.
JOB_SECURITY = ("--cap-drop", "ALL", "--security-opt", "no-new-privileges")
# The Helm chart's: a read-only root with a tmpfs /tmp only, no capabilities.
SERVICE_SECURITY = (
    "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777", *JOB_SECURITY,
)  # fmt: skip


@pytest.fixture(scope="module")
def images(request: pytest.FixtureRequest) -> Images:
    built = build_images()
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown even when output is captured
            reporter.write_line(
                f"\nimages ready in {built.build_seconds:.1f}s (scripts/build-images built or "
                f"reused them): {built.service} {built.workload}"
            )
    return built


def _readable_dir(path: Path, files: dict[str, bytes]) -> Path:
    """A directory any uid may read, like a ConfigMap volume (mode 0444 files)."""
    path.mkdir(parents=True)
    path.chmod(0o755)
    for name, data in files.items():
        (path / name).write_bytes(data)
        (path / name).chmod(0o444)
    return path


def _created_experiment(settings: Settings, repo: dict[str, object]) -> Experiment:
    """The sample experiment, made by the real service, committed to the git server."""
    with service_in_thread(settings) as service:
        experiment_id = str(create(service.http, sample_parts(repo))["experiment_id"])
    store = Store(settings.db_path)
    try:
        experiment = store.get_experiment(experiment_id)
    finally:
        store.close()
    assert experiment is not None
    return experiment


def test_workload_image_runs_a_job_run_end_to_end(
    images: Images,
    settings: Settings,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    repo = remote_repo(git_server, s3_server)
    experiment = _created_experiment(
        settings.model_copy(update={"git_ca_bundle": git_server.ca_file}), repo
    )
    run = Run(
        run_id=f"img{uuid.uuid4().hex[:10]}",
        experiment_id=experiment.experiment_id,
        owner=experiment.owner,
        resource="job",
        namespace="ml-images",
        params={"train.C": 0.5},
        state=RunState.QUEUED,
        created_at=dt.datetime.now(dt.UTC),
    )
    spec = runner_spec(run=run, experiment=experiment)
    configmap = _readable_dir(
        tmp_path / "configmap",
        {
            "runner.py": Path(runner.__file__).read_bytes(),
            "spec.json": (json.dumps(spec, sort_keys=True, indent=2) + "\n").encode(),
        },
    )
    ca = _readable_dir(tmp_path / "ca", {"ca.pem": git_server.ca_file.read_bytes()})
    # The Secret's keys reach the container as a file (envFrom), never on a command line.
    env_file = tmp_path / "secret.env"
    secret = credential_env(RepoSpec.model_validate(repo), git_ca_bundle=f"{CA_MOUNT}/ca.pem")
    env_file.write_text("".join(f"{key}={value}\n" for key, value in secret.items()))
    env_file.chmod(0o600)
    work = tmp_path / "work"  # the Job's emptyDir: writable by any uid
    work.mkdir()
    work.chmod(0o777)

    container = Container(
        images,
        images.workload,
        RUNNER_COMMAND,
        env={"DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"},
        volumes=[(configmap, RUNNER_MOUNT, "ro"), (ca, CA_MOUNT, "ro"), (work, RUN_WORKDIR, "rw")],
        options=["--env-file", str(env_file), *JOB_SECURITY],
    )
    with container:
        done = container.wait(RUN_TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:]
    for value in secret.values():
        if len(value) > 8:
            assert value not in done.stdout, "a credential reached the runner's output"

    status = json.loads((work / "status.json").read_text())
    assert status["state"] == "succeeded", status
    assert status["branch"] == f"runs/{run.run_id}"
    # Whatever the runner wrote, it wrote as the image's non-root user.
    owners = {path.stat().st_uid for path in (work / "repo").rglob("*")} | {
        (work / "status.json").stat().st_uid
    }
    assert owners == {WORKLOAD_UID}
    config = images.podman("image", "inspect", "--format", "{{.Config.User}}", images.workload)
    assert config.stdout.strip() == f"{WORKLOAD_UID}:{WORKLOAD_UID}"

    clone = clone_run(
        url=experiment.git_url,
        run_id=run.run_id,
        dest=tmp_path / "client",
        git=git_server,
        s3=s3_server,
        token=TOKEN,
    )
    assert (clone / "models" / "model.pkl").stat().st_size > 0
    assert yaml.safe_load((clone / "params.yaml").read_text())["train"]["C"] == 0.5
    metrics = json.loads((clone / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8, metrics


@pytest.fixture
def service_container(images: Images, tmp_path: Path) -> Iterator[tuple[Container, str, str]]:
    """`mlexp serve` from the service image, as the Helm chart runs it: read-only root,
    a tmpfs /tmp, no capabilities, the data dir (owned by the image's uid) at /data, the
    tokens file mounted read-only. Yields the container, its URL and a bearer token."""
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, SERVICE_UID, SERVICE_UID)
    token = f"img-{uuid.uuid4().hex}"
    tokens = yaml.safe_dump({"tokens": [{"token": token, "name": "images-test"}]})
    config = _readable_dir(tmp_path / "config", {"tokens.yaml": tokens.encode()})
    port = free_port()
    seccomp = sandbox_seccomp_profile(tmp_path / "seccomp.json")
    container = Container(
        images,
        images.service,
        env={"MLEXP_PORT": str(port), "MLEXP_TOKENS_FILE": "/etc/mlexp/tokens.yaml"},
        volumes=[(data, "/data", "rw"), (config, "/etc/mlexp", "ro")],
        # What bubblewrap needs to sandbox each local run (deploy/Dockerfile, docs/images.md):
        # /proc unmasked, so it can mount a /proc of its own, and a seccomp profile that lets
        # it name its UTS namespace. The sandbox itself is not weakened (isolation: sandbox).
        options=[
            *SERVICE_SECURITY,
            "--security-opt",
            "unmask=/proc/*",
            "--security-opt",
            f"seccomp={seccomp}",
        ],
        log=tmp_path / "service.log",
    )
    url = f"http://127.0.0.1:{port}"
    with container, httpx.Client(base_url=url, timeout=5) as probe:

        def answering() -> bool:
            if not container.running():
                return True
            try:
                return probe.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answering, 90, what="the service container to answer /healthz")
        log = (tmp_path / "service.log").read_text
        assert container.running(), f"the service container exited:\n{log()[-3000:]}"
        yield container, url, token


def test_service_image_serves_and_completes_a_local_run(
    images: Images, service_container: tuple[Container, str, str], tmp_path: Path
) -> None:
    container, url, token = service_container
    assert container.exec("id", "-u").stdout.strip() == str(SERVICE_UID)
    # Read-only in practice: the code, the venv and / refuse writes; /tmp and /data take them.
    for path in ("/app/x", "/opt/venv/x", "/x", "/var/lib/x"):
        assert container.exec("touch", path).returncode != 0, f"{path} is writable"
    for path in ("/tmp/x", "/data/x"):
        done = container.exec("touch", path)
        assert done.returncode == 0, done.stdout

    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        assert http.get("/experiments").status_code == 200
        experiment_id = create(http, sample_parts())["experiment_id"]
        response = http.post(
            "/experiment/run",
            json={"experiment_id": experiment_id, "resource": "local", "params": {"train.C": 2}},
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]

        def finished() -> dict[str, object] | None:
            run: dict[str, object] = http.get(f"/runs/{run_id}").json()
            return run if run["state"] in ("succeeded", "failed", "cancelled") else None

        run = wait_for(finished, RUN_TIMEOUT, what=f"run {run_id} to finish", max_interval=0.5)
        logs = http.get(f"/runs/{run_id}/logs").text
    assert run["state"] == "succeeded", f"{run}\n{logs[-3000:]}"
    result = run["result"]
    assert isinstance(result, dict)
    assert result["branch"] == f"runs/{run_id}"
    assert result["metrics"]["metrics.json"]["accuracy"] > 0.8, result["metrics"]
    # The service's state, repos and runs live in the mounted data dir, written as its uid.
    data = tmp_path / "data"
    assert (data / "state.db").stat().st_uid == SERVICE_UID
    assert any((data / "repos").iterdir())
    shutil.rmtree(data / "work", ignore_errors=True)  # run work dirs: nothing to keep
