"""The service's Kubernetes side on the real control plane (kwok nodes).

Covers: provisioning each workload kind through the API and reading it back with
the client; namespaces refused before any Kubernetes call; a full run exec'd into
a StatefulSet pod that publishes to git (HTTPS + token) and S3 (moto) and is
retrieved with git clone + dvc pull, with every object, event and log line of it
scanned for credentials; Job runs whose lifecycle drives the run's state
(success, failure with a reason, deadline, cancel); a service restart mid-run
that ends with exactly one Job. Job pods are run on this host by JobDriver.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from controller.executors.kube_job import ENDING_WORKERS
from controller.services.runs import LAUNCH_WORKERS, RUN_WORKERS
from controller.settings import EgressSettings, Settings
from tests.support.bundles import (
    FAILING_DVC,
    GATED_DVC,
    QUICK_DVC,
    SLEEPY_DVC,
    clone_run,
    create,
    provision_ready,
    sample_parts,
    small_parts,
    wait_for_stage,
)
from tests.support.cluster import MANUAL_DRIVE, Cluster
from tests.support.gitserver import GitHttpServer
from tests.support.jobdriver import JobDriver
from tests.support.s3server import S3Server
from tests.support.service import RunningService, service_in_thread
from tests.support.waiting import wait_for

TOKEN = "tok-0123456789abcdef"  # the session git server's password (tests/conftest.py)
SERVICE_THREADS = ("mlexp-launch", "mlexp-run", "mlexp-log", "mlexp-job-end", "mlexp-watch-",
                   "mlexp-dispatch", "mlexp-sweeps", "mlexp-outbox", "mlexp-store-")  # fmt: skip


@pytest.fixture
def k8s_settings(
    settings: Settings, k8s_cluster: Cluster, git_server: GitHttpServer, tmp_path: Path
) -> Settings:
    config = tmp_path / "k8s-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kubeconfig": str(k8s_cluster.kubeconfig),
                "namespaces": {"allowed": ["t-*"], "prohibited": ["t-forbidden*", "kube-*"]},
                "defaults": {"image": "mlexp/workload:test"},
                "jobs": {"backoff_limit": 0, "pod_labels": MANUAL_DRIVE},
                "exec": {"work_root": str(tmp_path / "exec-runs"), "poll_seconds": 0.2},
                "api": {"qps": 50, "burst": 100},
            }
        )
    )
    # The git (HTTPS) and S3 (moto) test servers listen on 127.0.0.1, which the kubernetes
    # profile's egress policy refuses by default; this cluster's "internal" servers are
    # allowed the way an operator would allow an in-cluster git server.
    egress = EgressSettings(allowed_networks=["127.0.0.0/8"])
    return settings.model_copy(
        update={"k8s_config_file": config, "git_ca_bundle": git_server.ca_file, "egress": egress}
    )


@pytest.fixture
def service(k8s_settings: Settings) -> Iterator[RunningService]:
    with service_in_thread(k8s_settings) as running:
        yield running


def remote_repo(git: GitHttpServer, s3: S3Server) -> dict[str, object]:
    name = f"k8s-{uuid.uuid4().hex[:8]}"
    bucket = f"k8s-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket)
    return {
        "git": {"url": git.create_bare(name), "username": "mlexp-bot", "token": TOKEN},
        "dvc": {"url": f"s3://{bucket}/data"},
        "storage": {
            "endpoint_url": s3.endpoint_url,
            "access_key_id": s3.access_key_id,
            "secret_access_key": s3.secret_access_key,
            "region": s3.region,
        },
    }


def run_on(
    service: RunningService, experiment_id: object, resource: str, namespace: str, **extra: object
) -> str:
    body = {"experiment_id": experiment_id, "resource": resource, "namespace": namespace, **extra}
    response = service.http.post("/experiment/run", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


def test_provision_each_kind_and_read_it_back(
    service: RunningService, k8s_api: client.ApiClient, namespace: str
) -> None:
    apps, batch = client.AppsV1Api(k8s_api), client.BatchV1Api(k8s_api)
    specs = {
        "StatefulSet": {"kind": "StatefulSet", "name": "trainer", "namespace": namespace,
                        "replicas": 1, "resources": {"requests": {"cpu": "100m"}}},
        "Deployment": {"kind": "Deployment", "name": "pool", "namespace": namespace,
                       "replicas": 2, "node_selector": {"type": "kwok"},
                       "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists",
                                        "effect": "NoSchedule"}]},
        # No volume provisioner in the test cluster: this Job's cache claim stays Pending.
        "Job": {"kind": "Job", "name": "once", "namespace": namespace, "command": ["true"],
                "dvc_cache": {"size": "1Gi"}},
    }  # fmt: skip
    for spec in specs.values():
        response = service.http.post("/resource/k8s/create", json=spec)
        assert response.status_code == 201, response.text
    sts = apps.read_namespaced_stateful_set("trainer", namespace)
    assert sts.metadata.labels["app.kubernetes.io/managed-by"] == "mlexp-ctrl"
    assert sts.spec.template.spec.containers[0].resources.requests["cpu"] == "100m"
    claim = client.CoreV1Api(k8s_api).read_namespaced_persistent_volume_claim(
        "once-dvc-cache", namespace
    )
    assert claim.spec.resources.requests["storage"] == "1Gi"
    assert apps.read_namespaced_deployment("pool", namespace).spec.replicas == 2
    assert batch.read_namespaced_job("once", namespace).spec.template.spec.containers

    # Posting the same spec again is an update, not a duplicate.
    generation = sts.metadata.generation  # status updates move resourceVersion; spec moves this
    again = service.http.post("/resource/k8s/create", json=specs["StatefulSet"])
    assert again.status_code == 201
    assert len(apps.list_namespaced_stateful_set(namespace).items) == 1
    assert apps.read_namespaced_stateful_set("trainer", namespace).metadata.generation == generation

    detail = wait_for(
        lambda: (
            (d := service.http.get(f"/resources/{namespace}/sts/trainer").json())["readiness"]
            and d["readiness"]["ready"] == 1
            and d
        ),
        60,
        what="the StatefulSet to be ready",
    )
    assert detail["readiness"]["ready_pods"] == ["trainer-0"]
    listed = service.http.get("/resources", params={"namespace": namespace}).json()
    assert {r["resource"] for r in listed} == {"sts/trainer", "deploy/pool", "job/once"}

    assert service.http.delete(f"/resources/{namespace}/deploy/pool").status_code == 204
    wait_for(
        lambda: not apps.list_namespaced_deployment(namespace).items, 30, what="deployment gone"
    )
    assert service.http.get(f"/resources/{namespace}/deploy/pool").status_code == 404


@pytest.mark.parametrize("bad", ["t-forbidden-x", "kube-system", "other", "Not_A_Name"])
def test_namespaces_outside_the_policy_are_refused(
    service: RunningService,
    k8s_api: client.ApiClient,
    bad: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    spec = {"kind": "StatefulSet", "name": "x", "namespace": bad}
    response = service.http.post("/resource/k8s/create", json=spec)
    assert response.status_code in (403, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    experiment = create(
        service.http,
        small_parts(
            QUICK_DVC,
            repo_json=remote_repo(git_server, s3_server),
        ),
    )
    run = service.http.post(
        "/experiment/run",
        json={"experiment_id": experiment["experiment_id"], "resource": "job", "namespace": bad},
    )
    assert run.status_code == (422 if bad == "Not_A_Name" else 403), run.text
    assert service.http.get("/runs").json() == []
    # Nothing was created anywhere for the refused requests.
    created = client.AppsV1Api(k8s_api).list_stateful_set_for_all_namespaces(
        field_selector="metadata.name=x"
    )
    assert created.items == []
    assert (
        client.CoreV1Api(k8s_api)
        .list_secret_for_all_namespaces(
            label_selector="mlexp.io/component=credentials",
            field_selector=f"metadata.namespace={bad}",
        )
        .items
        == []
    )


def test_job_runs_succeed_and_fail_with_reasons(
    service: RunningService,
    driver: JobDriver,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    repo = remote_repo(git_server, s3_server)
    quick = create(service.http, small_parts(QUICK_DVC, "x: 4\n", repo_json=repo))
    failing = create(service.http, small_parts(FAILING_DVC, repo_json=repo))
    ok = run_on(service, quick["experiment_id"], "job", namespace, params={"x": 9})
    bad = run_on(service, failing["experiment_id"], "job", namespace)

    done = service.wait_run(ok, timeout=240)
    assert done["state"] == "succeeded", service.http.get(f"/runs/{ok}/logs").text
    assert done["result"]["metrics"]["m.json"] == {"x": 9}  # type: ignore[index]
    log = service.http.get(f"/runs/{ok}/logs").text
    assert "log of pod" in log
    assert "step 4: dvc repro" in log

    failed = service.wait_run(bad, timeout=240)
    assert failed["state"] == "failed"
    reason = str(failed["reason"])
    assert "BackoffLimitExceeded" in reason or "failed on every attempt" in reason
    # What the pod's status says: the runner's reason, with dvc's line naming the stage's
    # exit code, and the container's.
    assert "dvc repro exited with" in reason, reason
    assert "exited with 3" in reason, reason
    assert "(exit code 1, Error)" in reason, reason
    assert "stage is failing on purpose" in service.http.get(f"/runs/{bad}/logs").text


def test_job_deadline_and_cancel(
    service: RunningService,
    driver: JobDriver,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    batch = client.BatchV1Api(k8s_api)
    experiment = create(
        service.http, small_parts(QUICK_DVC, repo_json=remote_repo(git_server, s3_server))
    )
    driver.hold_all = True
    slow = run_on(service, experiment["experiment_id"], "job", namespace, deadline_seconds=3)
    timed_out = service.wait_run(slow, timeout=120)
    assert timed_out["state"] == "failed"
    assert "deadline exceeded" in str(timed_out["reason"])

    held = run_on(service, experiment["experiment_id"], "job", namespace)
    wait_for(
        lambda: (
            batch.list_namespaced_job(namespace, label_selector=f"mlexp.io/run-id={held}").items
        ),
        60,
        what="the Job",
    )
    # Answered at once; the run is cancelled when the watch sees its Job gone.
    response = service.http.post(f"/runs/{held}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["cancel_requested"] is True
    assert response.json()["state"] in ("running", "cancelled")
    assert service.http.post(f"/runs/{held}/cancel").status_code in (202, 409)  # asked twice
    done = wait_for(
        lambda: (r := service.http.get(f"/runs/{held}").json())["state"] == "cancelled" and r,
        60,
        what="the cancel to be confirmed",
    )
    assert done["reason"] == "cancelled by local"
    assert (
        batch.list_namespaced_job(namespace, label_selector=f"mlexp.io/run-id={held}").items == []
    )


def test_restart_mid_job_run_keeps_one_job(
    k8s_settings: Settings,
    driver: JobDriver,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    batch = client.BatchV1Api(k8s_api)
    driver.hold_all = True
    with service_in_thread(k8s_settings) as first:
        experiment = create(
            first.http, small_parts(QUICK_DVC, repo_json=remote_repo(git_server, s3_server))
        )
        run_id = run_on(first, experiment["experiment_id"], "job", namespace)
        wait_for(lambda: batch.list_namespaced_job(namespace).items, 60, what="the Job")
    with service_in_thread(k8s_settings) as second:
        assert second.http.get(f"/runs/{run_id}").json()["state"] == "running"
        driver.release(run_id)
        final = second.wait_run(run_id, timeout=240)
    assert final["state"] == "succeeded", final
    assert len(batch.list_namespaced_job(namespace).items) == 1


def test_exec_run_in_a_statefulset_publishes_to_git_and_s3_without_leaks(
    service: RunningService,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    repo = remote_repo(git_server, s3_server)
    experiment = create(service.http, sample_parts(repo))
    spec = {"kind": "StatefulSet", "name": "trainer", "namespace": namespace,
            "experiment_id": experiment["experiment_id"]}  # fmt: skip
    provision_ready(service.http, spec)
    run_id = run_on(
        service, experiment["experiment_id"], "sts/trainer", namespace, params={"train.C": 0.2}
    )
    run = service.wait_run(run_id, timeout=300)
    assert run["state"] == "succeeded", service.http.get(f"/runs/{run_id}/logs").text
    assert run["result"]["metrics"]["metrics.json"]["accuracy"] > 0.8  # type: ignore[index]

    url = str(repo["git"]["url"])  # type: ignore[index]
    clone = clone_run(
        url=url, run_id=run_id, dest=tmp_path / "clone", git=git_server, s3=s3_server, token=TOKEN
    )
    assert (clone / "models" / "model.pkl").stat().st_size > 0

    # Credentials: only in the Secret. Scan every other object, the events and the logs.
    secrets = [TOKEN, s3_server.secret_access_key]
    places = {"service output": "".join(capfd.readouterr())}
    places["run log"] = service.http.get(f"/runs/{run_id}/logs").text
    places["run"] = json.dumps(run)
    dynamic = k8s_api.sanitize_for_serialization
    core, apps = client.CoreV1Api(k8s_api), client.AppsV1Api(k8s_api)
    for what, items in {
        "pods": core.list_namespaced_pod(namespace).items,
        "configmaps": core.list_namespaced_config_map(namespace).items,
        "events": core.list_namespaced_event(namespace).items,
        "statefulsets": apps.list_namespaced_stateful_set(namespace).items,
        "services": core.list_namespaced_service(namespace).items,
    }.items():
        places[what] = json.dumps(dynamic(items))
    for secret in secrets:
        assert [where for where, text in places.items() if secret in text] == []
    stored = core.list_namespaced_secret(
        namespace, label_selector="mlexp.io/component=credentials"
    ).items
    assert len(stored) == 1
    assert "MLEXP_GIT_TOKEN" in stored[0].data


def test_cancel_an_exec_run(
    service: RunningService, namespace: str, git_server: GitHttpServer, s3_server: S3Server
) -> None:
    experiment = create(
        service.http, small_parts(SLEEPY_DVC, repo_json=remote_repo(git_server, s3_server))
    )
    spec = {"kind": "Deployment", "name": "pool", "namespace": namespace,
            "experiment_id": experiment["experiment_id"]}  # fmt: skip
    provision_ready(service.http, spec)
    run_id = run_on(service, experiment["experiment_id"], "deploy/pool", namespace)
    wait_for_stage(service.http, run_id)
    response = service.http.post(f"/runs/{run_id}/cancel", params={"wait": "true"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"


def test_a_stuck_job_run_says_why(
    k8s_settings: Settings,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    config = yaml.safe_load(k8s_settings.k8s_config_file.read_text())
    config["defaults"]["resources"] = {"requests": {"cpu": "1000"}}  # more than any node has
    k8s_settings.k8s_config_file.write_text(yaml.safe_dump(config))
    with service_in_thread(k8s_settings) as service:
        experiment = create(
            service.http, small_parts(QUICK_DVC, repo_json=remote_repo(git_server, s3_server))
        )
        run_id = run_on(service, experiment["experiment_id"], "job", namespace)
        stuck = wait_for(
            lambda: (
                "Unschedulable" in str((r := service.http.get(f"/runs/{run_id}").json())["reason"])
                and r
            ),
            60,
            what="the run to report why it is stuck",
        )
        assert stuck["state"] == "running"
        assert "Insufficient cpu" in str(stuck["reason"])
        assert "waiting: Unschedulable" in service.http.get(f"/runs/{run_id}/logs").text
        cancelled = service.http.post(f"/runs/{run_id}/cancel", params={"wait": "true"})
        assert cancelled.json()["state"] == "cancelled"


def test_a_job_runs_log_follows_the_pod_while_it_runs(
    service: RunningService,
    driver: JobDriver,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    experiment = create(
        service.http, small_parts(SLEEPY_DVC, repo_json=remote_repo(git_server, s3_server))
    )
    run_id = run_on(service, experiment["experiment_id"], "job", namespace)
    with service.http.stream("GET", f"/runs/{run_id}/logs", params={"follow": "true"}) as stream:
        seen = ""
        for text in stream.iter_text():
            seen += text
            if "step 4: dvc repro" in seen:
                break
    assert "log of pod mlexp-" in seen
    assert service.http.get(f"/runs/{run_id}").json()["state"] == "running"
    cancelled = service.http.post(f"/runs/{run_id}/cancel", params={"wait": "true"})
    assert cancelled.json()["state"] == "cancelled"


def test_restart_mid_exec_run_reattaches(
    k8s_settings: Settings,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"  # exec under kwok runs on this host, so the stage sees this path
    with service_in_thread(k8s_settings) as first:
        experiment = create(
            first.http,
            small_parts(GATED_DVC, f"gate: {gate}\n", repo_json=remote_repo(git_server, s3_server)),
        )
        spec = {"kind": "StatefulSet", "name": "gated", "namespace": namespace,
                "experiment_id": experiment["experiment_id"]}  # fmt: skip
        provision_ready(first.http, spec)
        run_id = run_on(first, experiment["experiment_id"], "sts/gated", namespace)
        wait_for_stage(first.http, run_id)
    with service_in_thread(k8s_settings) as second:
        assert second.http.get(f"/runs/{run_id}").json()["state"] == "running"
        gate.touch()
        final = second.wait_run(run_id, timeout=240)
        log = second.http.get(f"/runs/{run_id}/logs").text
    assert final["state"] == "succeeded", log
    assert "re-attached" in log
    assert log.count("step 4: dvc repro") == 1  # the runner's log is not copied twice


def test_job_runs_in_flight_take_no_thread_each_and_cancel_together(
    service: RunningService,
    driver: JobDriver,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
) -> None:
    """Thirty held Job runs: the service's threads do not grow with them (watches and fixed
    pools follow them), and thirty cancels answered at once end with every run cancelled
    and no Job left."""
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    experiment = create(
        service.http, small_parts(QUICK_DVC, repo_json=remote_repo(git_server, s3_server))
    )
    driver.hold_all = True
    first = run_on(service, experiment["experiment_id"], "job", namespace)
    wait_for(lambda: "run started on" in service.http.get(f"/runs/{first}/logs").text, 60,
             what="the first run to start")  # fmt: skip
    threads_with_one = threading.active_count()
    run_ids = [first] + [run_on(service, experiment["experiment_id"], "job", namespace)
                         for _ in range(29)]  # fmt: skip

    def running_pods() -> int:
        pods = core.list_namespaced_pod(namespace, label_selector="mlexp.io/run-id").items
        return sum(1 for pod in pods if pod.status.phase == "Running")

    wait_for(lambda: running_pods() >= 30, 120, what="30 run pods Running")
    wait_for(
        lambda: all("run started on" in service.http.get(f"/runs/{r}/logs").text for r in run_ids),
        60,
        what="every run started",
    )
    names = [thread.name for thread in threading.enumerate()]
    assert not [n for n in names if any(run_id in n for run_id in run_ids)], names
    # The service's threads are its watches and fixed pools, which may have grown to their
    # size meanwhile; nothing per run.
    ours = [n for n in names if n.startswith("mlexp-")]
    assert all(n.startswith(SERVICE_THREADS) for n in ours), ours
    pools = LAUNCH_WORKERS + RUN_WORKERS + ENDING_WORKERS + 8  # 8: jobs.log_followers
    assert threading.active_count() - threads_with_one <= pools, names

    answers = [service.http.post(f"/runs/{run_id}/cancel") for run_id in run_ids]
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    assert all(a.json()["cancel_requested"] for a in answers)

    def states() -> set[str]:
        return {service.http.get(f"/runs/{r}").json()["state"] for r in run_ids}

    wait_for(lambda: states() == {"cancelled"}, 120, what="every run cancelled")
    assert batch.list_namespaced_job(namespace, label_selector="mlexp.io/run-id").items == []


def test_pod_logs_beyond_the_log_followers_are_saved_when_their_job_ends(
    k8s_settings: Settings,
    k8s_cluster: Cluster,
    k8s_api: client.ApiClient,
    namespace: str,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    """With one log follower, three Job runs at once: the pods it cannot follow have their
    log read once their Job has ended, so every run's log holds its pod's output."""
    config = yaml.safe_load(k8s_settings.k8s_config_file.read_text())
    config["jobs"]["log_followers"] = 1
    k8s_settings.k8s_config_file.write_text(yaml.safe_dump(config))
    with (
        service_in_thread(k8s_settings) as service,
        JobDriver(k8s_cluster, k8s_api, namespace, tmp_path / "job-pods"),
    ):
        experiment = create(
            service.http, small_parts(QUICK_DVC, repo_json=remote_repo(git_server, s3_server))
        )
        run_ids = [run_on(service, experiment["experiment_id"], "job", namespace)
                   for _ in range(3)]  # fmt: skip
        for run_id in run_ids:
            done = service.wait_run(run_id, timeout=240)
            log = service.http.get(f"/runs/{run_id}/logs").text
            assert done["state"] == "succeeded", log
            assert "log of pod mlexp-" in log
            assert "step 4: dvc repro" in log
