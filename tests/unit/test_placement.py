"""Which pod an exec run gets: the rule (:func:`choose_pod`) and the bookkeeping (:class:`PodGate`).

Covers: exclusive pods (a run never goes into a pod another run occupies; it waits when
all are busy, first come first served); shared pods (least loaded); waiting runs that
are withdrawn or woken; runs adopted after a restart occupying their pod; no double
booking when many runs are placed at once.
"""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from controller.services.placement import PodGate, WorkloadKey, choose_pod

STS = WorkloadKey("ml-a", "sts", "trainer")
OTHER = WorkloadKey("ml-a", "deploy", "trainer")  # same name, other kind: other pods

pod_names = st.sampled_from([f"trainer-{i}" for i in range(6)])


# -- the rule --------------------------------------------------------------------------


@given(
    ready=st.sets(pod_names, max_size=6),
    load=st.dictionaries(pod_names, st.integers(0, 3)),
    ahead=st.integers(0, 6),
)
def test_exclusive_runs_get_a_free_pod_only_if_older_waiters_still_get_one(
    ready: set[str], load: dict[str, int], ahead: int
) -> None:
    free = sorted(p for p in ready if load.get(p, 0) == 0)
    chosen = choose_pod(ready, load, shared=False, ahead=ahead)
    if ahead < len(free):
        assert chosen == free[0]
    else:
        assert chosen is None


@given(
    ready=st.sets(pod_names, min_size=1, max_size=6),
    load=st.dictionaries(pod_names, st.integers(0, 3)),
    ahead=st.integers(0, 6),
)
def test_shared_runs_go_to_the_least_loaded_ready_pod_and_never_wait(
    ready: set[str], load: dict[str, int], ahead: int
) -> None:
    chosen = choose_pod(ready, load, shared=True, ahead=ahead)
    assert chosen in ready
    assert load.get(chosen, 0) == min(load.get(p, 0) for p in ready)


def test_no_ready_pod_means_no_pod() -> None:
    assert choose_pod([], {}, shared=False) is None
    assert choose_pod([], {}, shared=True) is None


def test_the_choice_is_stable() -> None:
    assert choose_pod(["b-1", "b-0"], {}, shared=False) == "b-0"
    assert choose_pod(["b-1", "b-0"], {"b-0": 1}, shared=False) == "b-1"
    assert choose_pod(["b-1", "b-0"], {"b-0": 2, "b-1": 2}, shared=True) == "b-0"


# -- the gate --------------------------------------------------------------------------


def test_a_second_run_waits_for_the_only_pod_and_gets_it_when_the_first_ends() -> None:
    gate = PodGate()
    first = gate.place("run-1", STS, order="1", ready=["trainer-0"], shared=False)
    assert first.pod == "trainer-0"
    second = gate.place("run-2", STS, order="2", ready=["trainer-0"], shared=False)
    assert (second.pod, second.newly_waiting) == (None, True)
    again = gate.place("run-2", STS, order="2", ready=["trainer-0"], shared=False)
    assert (again.pod, again.newly_waiting) == (None, False)  # said once in its log
    assert gate.waiting(STS) == ["run-2"]

    assert gate.release("run-1") == STS  # whose waiters to wake
    assert gate.place("run-2", STS, order="2", ready=["trainer-0"], shared=False).pod == (
        "trainer-0"
    )
    assert gate.waiting(STS) == []
    assert gate.occupants(STS) == {"run-2": "trainer-0"}
    assert gate.release("run-1") is None  # released twice: nothing to wake


def test_waiters_are_served_oldest_first() -> None:
    gate = PodGate()
    gate.place("run-1", STS, order="1", ready=["trainer-0"], shared=False)
    gate.place("run-3", STS, order="3", ready=["trainer-0"], shared=False)
    gate.place("run-2", STS, order="2", ready=["trainer-0"], shared=False)
    assert gate.waiting(STS) == ["run-2", "run-3"]
    gate.release("run-1")
    # Woken in any order: the younger one finds the free pod promised to the older one.
    assert gate.place("run-3", STS, order="3", ready=["trainer-0"], shared=False).pod is None
    assert gate.place("run-2", STS, order="2", ready=["trainer-0"], shared=False).pod == (
        "trainer-0"
    )


def test_a_withdrawn_waiter_lets_the_next_one_move_up() -> None:
    gate = PodGate()
    gate.place("run-1", STS, order="1", ready=["trainer-0"], shared=False)
    gate.place("run-2", STS, order="2", ready=["trainer-0"], shared=False)
    gate.place("run-3", STS, order="3", ready=["trainer-0"], shared=False)
    gate.release("run-1")
    assert gate.withdraw("run-2") == STS  # cancelled while waiting
    assert gate.withdraw("run-2") is None
    assert gate.place("run-3", STS, order="3", ready=["trainer-0"], shared=False).pod == (
        "trainer-0"
    )


def test_runs_adopted_after_a_restart_occupy_the_pod_their_handle_names() -> None:
    gate = PodGate()
    gate.occupy("run-old", STS, "trainer-1")
    placed = gate.place("run-new", STS, order="2", ready=["trainer-0", "trainer-1"], shared=False)
    assert placed.pod == "trainer-0"
    third = gate.place("run-3", STS, order="3", ready=["trainer-0", "trainer-1"], shared=False)
    assert third.pod is None


def test_workloads_do_not_share_occupancy() -> None:
    gate = PodGate()
    gate.place("run-1", STS, order="1", ready=["trainer-0"], shared=False)
    assert gate.place("run-2", OTHER, order="2", ready=["trainer-0"], shared=False).pod == (
        "trainer-0"
    )


def test_shared_workloads_spread_runs_and_never_queue_them() -> None:
    gate = PodGate()
    ready = ["pool-a", "pool-b"]
    pods = [
        gate.place(f"run-{i}", STS, order=str(i), ready=ready, shared=True).pod for i in range(5)
    ]
    assert pods == ["pool-a", "pool-b", "pool-a", "pool-b", "pool-a"]
    assert gate.waiting(STS) == []


def test_placing_a_run_twice_gives_the_same_pod() -> None:
    gate = PodGate()
    ready = ["trainer-0", "trainer-1"]
    first = gate.place("run-1", STS, order="1", ready=ready, shared=False)
    assert gate.place("run-1", STS, order="1", ready=ready, shared=False).pod == first.pod
    assert gate.occupants(STS) == {"run-1": "trainer-0"}


def test_pods_left_free_while_older_runs_wait_wake_them() -> None:
    gate = PodGate()
    ready = ["trainer-0", "trainer-1"]
    gate.place("run-1", STS, order="1", ready=ready, shared=False)
    gate.place("run-2", STS, order="2", ready=ready, shared=False)
    gate.place("run-3", STS, order="3", ready=ready, shared=False)
    gate.place("run-4", STS, order="4", ready=ready, shared=False)
    gate.release("run-1")
    gate.release("run-2")
    placed = gate.place("run-3", STS, order="3", ready=ready, shared=False)
    assert (placed.pod, placed.wake_others) == ("trainer-0", True)  # run-4 can have trainer-1
    last = gate.place("run-4", STS, order="4", ready=ready, shared=False)
    assert (last.pod, last.wake_others) == ("trainer-1", False)


def test_runs_placed_at_once_never_share_a_pod() -> None:
    gate = PodGate()
    ready = ["trainer-0", "trainer-1", "trainer-2"]
    start = threading.Barrier(12)
    placed: dict[str, str | None] = {}

    def place(run_id: str) -> None:
        start.wait()
        placed[run_id] = gate.place(run_id, STS, order=run_id, ready=ready, shared=False).pod

    threads = [threading.Thread(target=place, args=(f"run-{i:02d}",)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pods = [pod for pod in placed.values() if pod is not None]
    assert sorted(pods) == ready
    assert len(gate.waiting(STS)) == 9
