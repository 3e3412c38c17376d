"""Exec runs and the pods they run in: whose pods they are, and who shares them (issue 7, item 6).

Covers, through the service over HTTP on the real control plane (kwok runs ``exec``'d
commands on this host, so a stage can leave its pid where the test reads it):

- a workload belongs to whoever provisioned it: another tenant's run on it is 404 -- the
  same answer as for a workload that does not exist or that the service did not provision
  -- and nothing is exec'd into its pod; its name cannot be re-provisioned by a stranger;
  an admin may run there;
- ``shared: false`` (the default): two runs on a one-pod StatefulSet never overlap; the
  second waits, queued, until the first has ended, also across a service restart;
- ``shared: true``: two runs overlap in one pod; cancelling one kills its whole process
  group and nothing of the other, which goes on to succeed;
- a run is followed over the one exec session that launched it: its log arrives while it
  runs, and no exec call is made until its clean-up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client

from controller.settings import Settings
from tests.cluster.test_service_k8s import k8s_settings, remote_repo, run_on  # noqa: F401
from tests.support.bundles import QUICK_DVC, create, provision_ready, small_parts, wait_for_stage
from tests.support.cluster import Cluster
from tests.support.gitserver import GitHttpServer
from tests.support.s3server import S3Server
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

HELD_DVC = """\
stages:
  held:
    cmd: >-
      python -c "import os, pathlib, time, yaml;
      p = yaml.safe_load(open('params.yaml'));
      pathlib.Path(p['pidfile']).write_text(str(os.getpid()));
      gate = pathlib.Path(p['gate']);
      [time.sleep(0.05) for _ in iter(gate.exists, True)];
      pathlib.Path('done').write_text('ok')"
    params: [gate, pidfile]
    outs: [done]
"""
"""A stage that writes its pid where ``pidfile`` says, then waits for the file ``gate``."""

WAITING = "waiting for a free pod of sts/solo"

TOKENS = {
    "alice": "alice-0123456789abcdef",
    "bob": "bob-0123456789abcdefgh",
    "root": "root-0123456789abcdefg",
}


def held_params(tmp_path: Path) -> str:
    return f"gate: {tmp_path / 'no-gate'}\npidfile: {tmp_path / 'no-pidfile'}\n"


def work_root(settings: Settings) -> Path:
    """Where exec'd runners get their work dirs (one host dir: kwok's pods are this host)."""
    return Path(yaml.safe_load(settings.k8s_config_file.read_text())["exec"]["work_root"])


def alive(pid: int) -> bool:
    """A process that still runs (a zombie has ended; only its parent has not looked yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def started(run: dict[str, object], what: str) -> datetime:
    return datetime.fromisoformat(str(run[what]))


def log_of(service: RunningService, run_id: str) -> str:
    return service.http.get(f"/runs/{run_id}/logs").text


@pytest.fixture
def service(k8s_settings: Settings) -> Iterator[RunningService]:  # noqa: F811
    with service_in_thread(k8s_settings) as running:
        yield running


@pytest.fixture
def tenants(k8s_settings: Settings, tmp_path: Path) -> Iterator[dict[str, RunningService]]:  # noqa: F811
    """One service with a tokens file; a client for each principal (root is an admin)."""
    tokens = tmp_path / "tokens.yaml"
    entries = [
        {"token": TOKENS["alice"], "name": "alice", "namespaces": ["t-*"]},
        {"token": TOKENS["bob"], "name": "bob", "namespaces": ["t-*"]},
        {"token": TOKENS["root"], "name": "root", "admin": True},
    ]
    tokens.write_text(yaml.safe_dump({"tokens": entries}))
    settings = k8s_settings.model_copy(update={"tokens_file": tokens})
    with service_in_thread(settings) as running:
        clients = {
            name: httpx.Client(
                base_url=running.url, timeout=120, headers={"Authorization": f"Bearer {token}"}
            )
            for name, token in TOKENS.items()
        }
        try:
            yield {
                name: RunningService(running.url, settings, http) for name, http in clients.items()
            }
        finally:
            for http in clients.values():
                http.close()


def test_a_workload_runs_only_the_runs_of_whoever_provisioned_it(
    tenants: dict[str, RunningService],
    k8s_cluster: Cluster,
    k8s_settings: Settings,  # noqa: F811
    k8s_api: client.ApiClient,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    alice, bob, root = tenants["alice"], tenants["bob"], tenants["root"]
    apps = client.AppsV1Api(k8s_api)
    mine = create(alice.http, small_parts(QUICK_DVC, repo_json=remote_repo(git_server, s3_server)))
    spec = {"kind": "StatefulSet", "name": "alices", "namespace": namespace,
            "experiment_id": mine["experiment_id"]}  # fmt: skip
    provision_ready(alice.http, spec)
    theirs = create(bob.http, small_parts(QUICK_DVC, repo_json=remote_repo(git_server, s3_server)))

    # Bob's run on alice's StatefulSet: 404, worded as for a workload that does not exist.
    refused = bob.http.post(
        "/experiment/run",
        json={"experiment_id": theirs["experiment_id"], "resource": "sts/alices",
              "namespace": namespace},
    )  # fmt: skip
    assert refused.status_code == 404, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    nothing = bob.http.post(
        "/experiment/run",
        json={"experiment_id": theirs["experiment_id"], "resource": "sts/nothing",
              "namespace": namespace},
    )  # fmt: skip
    assert nothing.status_code == 404
    assert refused.json()["detail"].replace("alices", "nothing") == nothing.json()["detail"]
    assert "alice" not in refused.json()["detail"].replace("sts/alices", "")
    # ... and nothing happened: no run recorded, nothing exec'd into the pod (kwok makes a
    # pod's directory on its first exec), no work dir.
    assert bob.http.get("/runs").json() == []
    assert not k8s_cluster.exec_workdir(namespace, "alices-0").exists()
    assert not work_root(k8s_settings).exists() or not any(work_root(k8s_settings).iterdir())

    # Bob cannot take the name over by provisioning it again, nor delete it.
    takeover = {**spec, "experiment_id": theirs["experiment_id"], "replicas": 3}
    assert bob.http.post("/resource/k8s/create", json=takeover).status_code == 409
    assert bob.http.delete(f"/resources/{namespace}/sts/alices").status_code == 404
    live = apps.read_namespaced_stateful_set("alices", namespace)
    assert live.spec.replicas == 1
    assert live.metadata.labels["mlexp.io/experiment-id"] == mine["experiment_id"]

    # A StatefulSet made without the service, with the labels the service selects pods by:
    # nobody runs in it, not even an admin, and nobody takes it over.
    labels = {"mlexp.io/resource": "outside", "mlexp.io/kind": "StatefulSet"}
    apps.create_namespaced_stateful_set(
        namespace,
        client.V1StatefulSet(
            metadata=client.V1ObjectMeta(name="outside", labels=labels),
            spec=client.V1StatefulSetSpec(
                service_name="outside",
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="main", image="anything")]
                    ),
                ),
            ),
        ),
    )
    for who in (alice, root):
        run = who.http.post(
            "/experiment/run",
            json={"experiment_id": mine["experiment_id"], "resource": "sts/outside",
                  "namespace": namespace},
        )  # fmt: skip
        assert run.status_code == 404, run.text
    outside = {"kind": "StatefulSet", "name": "outside", "namespace": namespace, "replicas": 2}
    assert root.http.post("/resource/k8s/create", json=outside).status_code == 409
    assert apps.read_namespaced_stateful_set("outside", namespace).spec.replicas == 1

    # The owner and an admin run there.
    owners = run_on(alice, mine["experiment_id"], "sts/alices", namespace, params={"x": 2})
    admins = run_on(root, mine["experiment_id"], "sts/alices", namespace, params={"x": 3})
    for who, run_id, x in ((alice, owners, 2), (root, admins, 3)):
        done = who.wait_run(run_id, timeout=240)
        assert done["state"] == "succeeded", log_of(who, run_id)
        assert done["result"]["metrics"]["m.json"] == {"x": x}  # type: ignore[index]
    assert k8s_cluster.exec_workdir(namespace, "alices-0").is_dir()
    assert bob.http.get(f"/runs/{owners}").status_code == 404


def test_runs_on_an_unshared_pod_take_turns(
    service: RunningService,
    k8s_settings: Settings,  # noqa: F811
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    experiment = create(
        service.http,
        small_parts(HELD_DVC, held_params(tmp_path), remote_repo(git_server, s3_server)),
    )
    spec = {"kind": "StatefulSet", "name": "solo", "namespace": namespace,
            "experiment_id": experiment["experiment_id"]}  # fmt: skip
    provision_ready(service.http, spec)
    gates = [tmp_path / "gate-1", tmp_path / "gate-2"]
    pids = [tmp_path / "pid-1", tmp_path / "pid-2"]
    first, second = (
        run_on(service, experiment["experiment_id"], "sts/solo", namespace,
               params={"gate": str(gate), "pidfile": str(pid)})
        for gate, pid in zip(gates, pids, strict=True)
    )  # fmt: skip
    wait_for_stage(service.http, first)
    wait_for(lambda: WAITING in log_of(service, second), 60, what="the second run to wait")
    gates[1].touch()  # the second run would not wait for its gate: only the pod holds it
    assert service.http.get(f"/runs/{second}").json()["state"] == "queued"
    assert service.http.get(f"/runs/{first}").json()["state"] == "running"
    assert not (work_root(k8s_settings) / second).exists()  # nothing of it in the pod
    assert not pids[1].exists()

    gates[0].touch()
    one = service.wait_run(first, timeout=240)
    two = service.wait_run(second, timeout=240)
    assert one["state"] == "succeeded", log_of(service, first)
    assert two["state"] == "succeeded", log_of(service, second)
    assert started(two, "started_at") >= started(one, "finished_at")
    assert "run started on sts/solo, pod solo-0" in log_of(service, second)
    assert log_of(service, second).count(WAITING) == 1


def test_runs_waiting_for_a_pod_keep_waiting_across_a_restart(
    k8s_settings: Settings,  # noqa: F811
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    with service_in_thread(k8s_settings) as before:
        experiment = create(
            before.http,
            small_parts(HELD_DVC, held_params(tmp_path), remote_repo(git_server, s3_server)),
        )
        spec = {"kind": "StatefulSet", "name": "solo", "namespace": namespace,
                "experiment_id": experiment["experiment_id"]}  # fmt: skip
        provision_ready(before.http, spec)
        first, second = (
            run_on(before, experiment["experiment_id"], "sts/solo", namespace,
                   params={"gate": str(gate), "pidfile": str(tmp_path / f"pid-{i}")})
            for i in (1, 2)
        )  # fmt: skip
        wait_for_stage(before.http, first)
        wait_for(lambda: WAITING in log_of(before, second), 60, what="the second run to wait")
    with service_in_thread(k8s_settings) as after:
        # The restarted service found the first run in the pod, so the second waits again.
        wait_for(
            lambda: log_of(after, second).count(WAITING) == 2, 60, what="the second to wait again"
        )
        assert after.http.get(f"/runs/{second}").json()["state"] == "queued"
        assert after.http.get(f"/runs/{first}").json()["state"] == "running"
        assert not (work_root(k8s_settings) / second).exists()
        gate.touch()  # both runs' stages pass it; the second still has to get the pod first
        one = after.wait_run(first, timeout=240)
        two = after.wait_run(second, timeout=240)
    assert one["state"] == "succeeded", one
    assert two["state"] == "succeeded", two
    assert started(two, "started_at") >= started(one, "finished_at")


def test_runs_share_a_shared_pod_and_cancel_stops_only_its_own(
    service: RunningService,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    experiment = create(
        service.http,
        small_parts(HELD_DVC, held_params(tmp_path), remote_repo(git_server, s3_server)),
    )
    spec = {"kind": "StatefulSet", "name": "pool", "namespace": namespace, "shared": True,
            "experiment_id": experiment["experiment_id"]}  # fmt: skip
    provision_ready(service.http, spec)
    gates = [tmp_path / "gate-1", tmp_path / "gate-2"]
    pidfiles = [tmp_path / "pid-1", tmp_path / "pid-2"]
    doomed, kept = (
        run_on(service, experiment["experiment_id"], "sts/pool", namespace,
               params={"gate": str(gate), "pidfile": str(pid)})
        for gate, pid in zip(gates, pidfiles, strict=True)
    )  # fmt: skip
    # Both stages run at once, in the one pod.
    wait_for(lambda: all(p.exists() for p in pidfiles), 120, what="both stages to run")
    for run_id in (doomed, kept):
        assert "run started on sts/pool, pod pool-0" in log_of(service, run_id)
        assert service.http.get(f"/runs/{run_id}").json()["state"] == "running"
    doomed_stage, kept_stage = (int(p.read_text()) for p in pidfiles)
    assert alive(doomed_stage)
    assert alive(kept_stage)

    response = service.http.post(f"/runs/{doomed}/cancel", params={"wait": "true"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    # Cancel answers once the run's process group is gone: its stage too, not just the runner.
    assert not alive(doomed_stage)
    assert alive(kept_stage)
    assert service.http.get(f"/runs/{kept}").json()["state"] == "running"

    gates[1].touch()
    done = service.wait_run(kept, timeout=240)
    assert done["state"] == "succeeded", log_of(service, kept)
    assert service.http.get(f"/runs/{doomed}").json()["state"] == "cancelled"


def test_an_exec_run_is_followed_over_one_stream(
    service: RunningService,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    """Its log arrives while it runs and its end is seen at once, with no exec calls in
    between: a launch, then the stream, then the clean-up."""
    experiment = create(
        service.http,
        small_parts(HELD_DVC, held_params(tmp_path), remote_repo(git_server, s3_server)),
    )
    spec = {"kind": "StatefulSet", "name": "solo", "namespace": namespace,
            "experiment_id": experiment["experiment_id"]}  # fmt: skip
    provision_ready(service.http, spec)

    def exec_calls() -> int:
        return int(service.http.get("/healthz").json()["kubernetes_api_calls"].get("exec", 0))

    before = exec_calls()
    gate, pidfile = tmp_path / "gate", tmp_path / "pid"
    run_id = run_on(service, experiment["experiment_id"], "sts/solo", namespace,
                    params={"gate": str(gate), "pidfile": str(pidfile)})  # fmt: skip
    wait_for_stage(service.http, run_id)  # the runner's log, copied while it runs
    assert exec_calls() - before == 1  # the launch, whose session follows the runner
    time.sleep(4)  # polling every exec.poll_seconds would show here
    assert exec_calls() - before == 1
    gate.touch()
    stage = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30, what="pid"))
    done = service.wait_run(run_id, timeout=240)
    assert done["state"] == "succeeded", log_of(service, run_id)
    assert not alive(stage)
    assert "succeeded: runs/" in log_of(service, run_id)  # the runner's last line
    wait_for(lambda: exec_calls() - before == 2, 30, what="the clean-up's exec")
