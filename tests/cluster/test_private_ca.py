"""A private git CA reaches a Job's pod as content, never as a path of the service's host
(issue 13), in a real container on the real node (issue 14).

The service reads its CA from a path of its host; the run's pod, with a filesystem of
its own, reaches the HTTPS git server with the copy in the run's ConfigMap only. Covers:
the ConfigMap carries the CA's text (``git-ca.crt``, named by spec.json's ``ca_files``);
the credentials Secret, the Job, the ConfigMap and the pod name no host path and mount
none (no ``hostPath`` volume; the ConfigMap is mounted); the run's stage, inside the
container, does not see the host's CA file or its directory; the run pushes its commit.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.settings import Settings
from tests.cluster.test_real_node_runs import real_settings  # noqa: F401
from tests.cluster.test_service_k8s import remote_repo, run_on
from tests.support.bundles import create, small_parts
from tests.support.gitserver import GitHttpServer
from tests.support.s3server import S3Server
from tests.support.service import service_in_thread
from tests.support.waiting import wait_for

# The stage looks, from inside the container, for the host's CA file and its directory
# (the path comes base64-encoded, so that a host path found in the run's objects can only
# be the service's doing).
LOOK_DVC = """\
stages:
  look:
    cmd: >-
      python -c "import base64, json, pathlib;
      host = pathlib.Path(base64.b64decode('{host}').decode());
      json.dump({{'host_ca_seen': int(host.exists()), 'host_dir_seen': int(host.parent.exists())}},
      open('m.json', 'w'))"
    metrics:
      - m.json: {{cache: false}}
"""


def test_a_job_reaches_a_private_ca_git_server_through_its_configmap(
    real_settings: Settings,  # noqa: F811
    real_node: Any,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    s3_server: S3Server,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    host_ca = tmp_path / "service-ca" / "git-ca.pem"
    host_ca.parent.mkdir()
    shutil.copy(git_server.ca_file, host_ca)
    settings = real_settings.model_copy(update={"git_ca_bundle": host_ca})
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    host_root = tmp_path_factory.getbasetemp()
    host_paths = [str(host_ca.parent), str(git_server.ca_file)]
    look = LOOK_DVC.format(host=base64.b64encode(str(host_ca).encode()).decode())
    with service_in_thread(settings) as service:
        experiment = create(
            service.http, small_parts(look, repo_json=remote_repo(git_server, s3_server))
        )
        run_id = run_on(service, experiment["experiment_id"], "job", namespace)
        selector = f"mlexp.io/run-id={run_id}"
        # Read as soon as they exist: a finished Job's ConfigMap goes with it.
        jobs = wait_for(lambda: batch.list_namespaced_job(namespace).items, 60, what="the Job")
        maps = wait_for(
            lambda: core.list_namespaced_config_map(namespace, label_selector=selector).items,
            60,
            what="the run's ConfigMap",
        )
        secrets = core.list_namespaced_secret(
            namespace, label_selector="mlexp.io/component=credentials"
        ).items
        final = service.wait_run(run_id, timeout=300)
        log = service.http.get(f"/runs/{run_id}/logs").text
        (pod,) = core.list_namespaced_pod(namespace, label_selector=selector).items

    data, map_name = maps[0].data, maps[0].metadata.name
    assert data["git-ca.crt"] == host_ca.read_text()
    assert json.loads(data["spec.json"])["ca_files"] == {"git": "git-ca.crt"}
    env = {k: base64.b64decode(v).decode() for k, v in (secrets[0].data or {}).items()}
    assert "MLEXP_GIT_CA_BUNDLE" not in env
    objects = json.dumps(k8s_api.sanitize_for_serialization([jobs, maps, secrets, pod]))
    for path in host_paths:
        assert path not in objects
    # Nothing of the host's filesystem is mounted into the pod; the run's ConfigMap is.
    assert pod.spec.node_name == real_node.name
    volumes = pod.spec.volumes or []
    assert all(volume.host_path is None for volume in volumes)
    (container,) = pod.spec.containers
    from_map = {v.name for v in volumes if v.config_map and v.config_map.name == map_name}
    assert from_map & {m.name for m in container.volume_mounts or []}
    said = json.dumps(k8s_api.sanitize_for_serialization([container.env, container.env_from]))
    assert str(host_root) not in said, said  # nor any path of the tests' host dirs

    assert final["state"] == "succeeded", log
    assert f"[mlexp] log of pod {pod.metadata.name}:" in log  # the kubelet's log of it
    assert "git push" in log
    # Inside the container the host's CA file and its directory are not there: the git
    # server's certificate was checked against the ConfigMap's copy.
    seen = final["result"]["metrics"]["m.json"]
    assert seen == {"host_ca_seen": 0, "host_dir_seen": 0}, seen
