"""``storage.ca_bundle`` on a real node (issue 13): a Job run in the workload image, in a
real container, publishes to S3 over HTTPS whose certificate a private CA issued (moto's
server over TLS, tests/support/s3server.py), the CA reaching the pod only as content.

The run's ConfigMap holds the service's CA file as ``s3-ca.crt`` and its spec names it
(``ca_files``); the runner points ``AWS_CA_BUNDLE`` at the mounted copy. No object of
the run (Job, ConfigMap, credentials Secret) names a path of the service's host, and the
container could not open one anyway. A client with the CA then gets the model with
``git clone`` + ``dvc pull``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.settings import Settings, StorageSettings
from tests.cluster.test_real_node_runs import TOKEN, pods_of, real_settings  # noqa: F401
from tests.cluster.test_service_k8s import remote_repo, run_on
from tests.support.bundles import clone_run, create, sample_parts
from tests.support.gitserver import GitHttpServer
from tests.support.s3server import S3Server
from tests.support.service import service_in_thread
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def https_s3() -> Iterator[S3Server]:
    with S3Server(https=True) as server:
        yield server


def test_a_job_run_publishes_to_https_s3_with_a_private_ca(
    real_settings: Settings,  # noqa: F811
    real_node: Any,
    namespace: str,
    k8s_api: client.ApiClient,
    git_server: GitHttpServer,
    https_s3: S3Server,
    tmp_path: Path,
) -> None:
    host_ca = tmp_path / "service-ca" / "s3-ca.pem"
    host_ca.parent.mkdir()
    host_ca.write_bytes(https_s3.ca_file.read_bytes())
    settings = real_settings.model_copy(update={"storage": StorageSettings(ca_bundle=host_ca)})
    core, batch = client.CoreV1Api(k8s_api), client.BatchV1Api(k8s_api)
    repo = remote_repo(git_server, https_s3)
    assert str(repo["storage"]["endpoint_url"]).startswith("https://")  # type: ignore[index]
    bucket = str(repo["dvc"]["url"]).removeprefix("s3://").split("/")[0]  # type: ignore[index]

    with service_in_thread(settings) as service:
        experiment = create(service.http, sample_parts(repo))
        run_id = run_on(service, experiment["experiment_id"], "job", namespace)
        selector = f"mlexp.io/run-id={run_id}"
        # Read while the run goes on: the Job's TTL takes its ConfigMap with it later.
        (config_map,) = wait_for(
            lambda: core.list_namespaced_config_map(namespace, label_selector=selector).items,
            120,
            what="the run's ConfigMap",
        )
        jobs = batch.list_namespaced_job(namespace, label_selector=selector).items
        secrets = core.list_namespaced_secret(
            namespace, label_selector="mlexp.io/component=credentials"
        ).items
        run = service.wait_run(run_id, timeout=900)
        log = service.http.get(f"/runs/{run_id}/logs").text

    data = config_map.data or {}
    assert data["s3-ca.crt"] == host_ca.read_text()
    assert data["git-ca.crt"] == git_server.ca_file.read_text()
    assert json.loads(data["spec.json"])["ca_files"] == {"git": "git-ca.crt", "s3": "s3-ca.crt"}
    env = {k: base64.b64decode(v).decode() for k, v in (secrets[0].data or {}).items()}
    assert "AWS_CA_BUNDLE" not in env
    assert env["AWS_SECRET_ACCESS_KEY"] == https_s3.secret_access_key
    objects = json.dumps(k8s_api.sanitize_for_serialization([jobs, config_map, secrets]))
    assert str(host_ca.parent) not in objects

    assert run["state"] == "succeeded", log
    assert run["result"]["metrics"]["metrics.json"]["accuracy"] > 0.8  # type: ignore[index]
    assert "step 6: dvc push" in log
    assert "step 7: git push" in log
    (pod,) = pods_of(core, namespace, run_id)
    assert pod.spec.node_name == real_node.name
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    keys = https_s3.list_keys(bucket, "data/")
    assert any(key.startswith("data/files/md5/") for key in keys), keys

    clone = clone_run(
        url=str(repo["git"]["url"]),  # type: ignore[index]
        run_id=run_id,
        dest=tmp_path / "clone",
        git=git_server,
        s3=https_s3,  # AWS_CA_BUNDLE: the client trusts the private CA too
        token=TOKEN,
    )
    assert (clone / "models" / "model.pkl").stat().st_size > 0
