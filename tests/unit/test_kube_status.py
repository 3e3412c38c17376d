"""What the Kubernetes side reads from objects: Job outcomes, stuck pods; the API token bucket."""

from __future__ import annotations

import time

import pytest

from controller.adapters.kube import TokenBucket
from controller.executors.kube_tracking import job_finished, pod_stuck_reason

DEADLINE = "Job was active longer than specified deadline"
BACKOFF = "Job has reached the specified backoff limit"


def condition(
    kind: str, reason: str = "", message: str = "", status: str = "True"
) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([], None),
        ([condition("Complete")], ("Complete", "")),
        ([condition("SuccessCriteriaMet"), condition("Complete")], ("Complete", "")),
        ([condition("Complete", status="False")], None),
        (
            [condition("Failed", "DeadlineExceeded", DEADLINE)],
            ("Failed", "deadline exceeded: Job was active longer than specified deadline"),
        ),
        (
            [condition("Failed", "BackoffLimitExceeded", BACKOFF)],
            ("Failed", "the runner failed on every attempt (Job has reached the specified backoff"
             " limit); see the run's log"),
        ),
        ([condition("Failed", "PodFailurePolicy")], ("Failed", "PodFailurePolicy")),
    ],
)  # fmt: skip
def test_job_finished(conditions: list[dict[str, str]], expected: tuple[str, str] | None) -> None:
    assert job_finished({"status": {"conditions": conditions}}) == expected


def test_stuck_pods_say_why() -> None:
    unschedulable = {"status": {"conditions": [condition(
        "PodScheduled", "Unschedulable", "0/2 nodes are available: 2 Insufficient cpu.", "False"
    )]}}  # fmt: skip
    assert pod_stuck_reason(unschedulable) == (
        "Unschedulable: 0/2 nodes are available: 2 Insufficient cpu."
    )
    backoff = {"status": {"containerStatuses": [
        {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}
    ]}}  # fmt: skip
    assert pod_stuck_reason(backoff) == "ImagePullBackOff: Back-off pulling image"
    crash = {
        "status": {"containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
    }
    assert pod_stuck_reason(crash) == "CrashLoopBackOff"
    creating = {
        "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}
    }
    assert pod_stuck_reason(creating) is None
    assert pod_stuck_reason({"status": {"phase": "Running"}}) is None


def test_token_bucket_limits_the_rate() -> None:
    bucket = TokenBucket(qps=50, burst=5)
    started = time.monotonic()
    for _ in range(5):
        bucket.acquire()
    burst_time = time.monotonic() - started
    for _ in range(10):
        bucket.acquire()
    total = time.monotonic() - started
    assert burst_time < 0.05  # the burst is free
    assert total >= 10 / 50 * 0.9  # then 50 a second at most
