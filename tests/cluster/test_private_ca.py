"""A private git CA reaches a Job's pod as content, never as a path of the service's host
(issue 13), on the real control plane (kwok nodes; JobDriver runs the pod, resolving its
ConfigMap volume as a kubelet would).

The service's CA file is moved away after the run's objects are created and before its
pod starts, and put back only once the pod's command has ended (the service needs it for
its own git calls, reading the result): the pod can only have reached the git server
through the copy in the run's ConfigMap. The credentials Secret, the Job and the
ConfigMap's spec name no host path.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from kubernetes import client

from controller.settings import Settings
from tests.cluster.test_service_k8s import k8s_settings, remote_repo, run_on  # noqa: F401
from tests.support.bundles import QUICK_DVC, create, small_parts
from tests.support.gitserver import GitHttpServer
from tests.support.jobdriver import JobDriver
from tests.support.s3server import S3Server
from tests.support.service import service_in_thread
from tests.support.waiting import wait_for


def test_a_job_reaches_a_private_ca_git_server_through_its_configmap(
    k8s_settings: Settings,  # noqa: F811
    driver: JobDriver,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    host_ca = tmp_path / "service-ca" / "git-ca.pem"
    host_ca.parent.mkdir()
    shutil.copy(git_server.ca_file, host_ca)
    settings = k8s_settings.model_copy(update={"git_ca_bundle": host_ca})
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    driver.hold_all = True
    with service_in_thread(settings) as service:
        experiment = create(
            service.http, small_parts(QUICK_DVC, repo_json=remote_repo(git_server, s3_server))
        )
        run_id = run_on(service, experiment["experiment_id"], "job", namespace)
        jobs = wait_for(lambda: batch.list_namespaced_job(namespace).items, 60, what="the Job")
        selector = f"mlexp.io/run-id={run_id}"
        maps = wait_for(
            lambda: core.list_namespaced_config_map(namespace, label_selector=selector).items,
            60,
            what="the run's ConfigMap",
        )
        # From here on the host's CA file is gone: only the ConfigMap's copy remains.
        moved = host_ca.rename(tmp_path / "moved-away.pem")
        data = maps[0].data
        assert data["git-ca.crt"] == moved.read_text()
        assert json.loads(data["spec.json"])["ca_files"] == {"git": "git-ca.crt"}
        secrets = core.list_namespaced_secret(
            namespace, label_selector="mlexp.io/component=credentials"
        ).items
        env = {k: base64.b64decode(v).decode() for k, v in (secrets[0].data or {}).items()}
        assert "MLEXP_GIT_CA_BUNDLE" not in env
        objects = json.dumps(k8s_api.sanitize_for_serialization([jobs, maps, secrets]))
        assert str(host_ca.parent) not in objects

        exits: list[int] = []

        def put_back(pod: str, code: int) -> None:
            exits.append(code)
            moved.rename(host_ca)

        driver.on_exit = put_back
        driver.release(run_id)
        final = service.wait_run(run_id, timeout=240)
        log = service.http.get(f"/runs/{run_id}/logs").text
        assert exits == [0], log
        assert final["state"] == "succeeded", log
        assert "git push" in log
