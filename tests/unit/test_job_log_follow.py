"""How the Job executor copies a pod's log (:mod:`controller.executors.kube_job`), over a
fake Kubernetes adapter: the runner's plot reports are taken out of the followed log --
cut anywhere between the chunks the API server sends -- and kept as the run's live plots;
a log read once after the Job ended is cleaned the same way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from controller import runner
from controller.adapters.kube import KubeApi
from controller.adapters.liveplots import ReportedPlots, reported_dir
from controller.domain.errors import ExternalError
from controller.domain.k8sconfig import K8sConfig
from controller.executors.kube_job import JobExecutor
from controller.executors.kube_tracking import JobTracker, failure_detail, slim_pod

CURVE = b"step\tloss\n0\t1.0\n1\t0.5\n"


class FakeKube:
    def __init__(self, pieces: list[bytes], whole: str = "") -> None:
        self.pieces = pieces
        self.whole = whole

    def follow_pod_log(self, namespace: str, pod: str) -> Iterator[bytes]:
        if not self.pieces:
            raise ExternalError(f"follow the log of pod {namespace}/{pod}: not there")
        yield from self.pieces

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        return self.whole


class NoJob:
    def current(self, namespace: str, job: str) -> None:
        return None

    def stop(self) -> None:
        pass


def executor(kube: FakeKube, tmp_path: Path) -> JobExecutor:
    config = K8sConfig(kubeconfig=tmp_path / "kubeconfig")
    return JobExecutor(cast(KubeApi, kube), config, cast(JobTracker, NoJob()))


def stream() -> bytes:
    first = runner.PlotReporter._line("dvclive/plots/metrics/loss.tsv", 0, CURVE[:16])
    more = runner.PlotReporter._line("dvclive/plots/metrics/loss.tsv", 16, CURVE[16:])
    # A report may land inside a line of the stage's output.
    return b"[mlexp] dvc repro\nepoch 0 " + first + b"done\n" + more + b"epoch 1 done\n"


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_a_followed_log_keeps_the_output_and_the_reports_apart(tmp_path: Path, size: int) -> None:
    data = stream()
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    jobs = executor(FakeKube(pieces), tmp_path)
    log_path = tmp_path / "run.log"
    try:
        jobs._follow_log("ns", "job", "pod-1", log_path)
    finally:
        jobs.close()
    assert log_path.read_bytes() == (
        b"[mlexp] log of pod pod-1:\n[mlexp] dvc repro\nepoch 0 done\nepoch 1 done\n"
    )
    kept = ReportedPlots(reported_dir(log_path)).read(["dvclive/plots/metrics/loss.tsv"])
    assert kept == {"dvclive/plots/metrics/loss.tsv": CURVE}


def test_a_log_read_once_after_the_job_is_cleaned_too(tmp_path: Path) -> None:
    jobs = executor(FakeKube([], whole=stream().decode()), tmp_path)
    log_path = tmp_path / "run.log"
    try:
        jobs._follow_log("ns", "job", "pod-1", log_path)
    finally:
        jobs.close()
    assert log_path.read_bytes() == (
        b"[mlexp] log of pod pod-1:\n[mlexp] dvc repro\nepoch 0 done\nepoch 1 done\n"
    )


def test_a_failed_pods_termination_message_and_exit_code_say_why() -> None:
    pod = {
        "status": {
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": "dvc repro exited with 255: ERROR: failed to reproduce"
                            " 'boom': failed to run: python -c ..., exited with 3\n",
                        }
                    }
                }
            ]
        }
    }
    detail = failure_detail(slim_pod(pod))
    assert detail == (
        "dvc repro exited with 255: ERROR: failed to reproduce 'boom': failed to run: "
        "python -c ..., exited with 3 (exit code 1, Error)"
    )
    assert failure_detail(slim_pod({"status": {"containerStatuses": []}})) is None
    done = {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert failure_detail(slim_pod({"status": {"containerStatuses": [done]}})) is None


def test_a_failing_tool_says_its_last_error() -> None:
    output = b"Running stage 'boom':\nfailing\nERROR: failed to reproduce 'boom': exited with 3\n"
    assert runner.last_error(output) == "ERROR: failed to reproduce 'boom': exited with 3"
    assert runner.last_error(b"all fine\n") == ""
