"""The dispatch fence: one instance dispatches and tracks runs, others stand by.

Two instances of the service may run against one cluster for a while (a rollout's
overlap, a mistake): both would adopt the same running runs and launch the same queued
ones. The fence is a ``coordination.k8s.io/v1`` Lease in the service's own namespace.
The instance holding it is the **leader**: it starts the run service, the sweeps and the
outbox (``on_acquired``). The others are on **standby**: they dispatch and adopt nothing,
answer reads but refuse changes (``api.middleware.Standby``), report not ready, and take
the Lease over once it has not been renewed for its duration.

The rules, as client-go's leader election has them:

- the leader renews every ``retry`` seconds; if it has not managed to for
  ``renew_deadline`` (two thirds of the duration) it has lost the Lease (``on_lost``: the
  service stops, so it can no longer act as a leader by the time a standby takes over);
- a standby measures expiry on its own clock, from when it *saw* the Lease record change
  (its resourceVersion), never from the times written in it: clocks of two machines
  need not agree;
- every write carries the resourceVersion it read: two standbys racing for an expired
  Lease get one success and one Conflict;
- a leader that stops cleanly releases the Lease (no holder), so a successor starts at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from controller.adapters.kube import KubeApi, Obj
from controller.domain.errors import Conflict, MlexpError
from controller.domain.k8sconfig import LeaseConfig

log = logging.getLogger("mlexp.fence")

State = Literal["starting", "standby", "leader", "stopped"]


def identity(hostname: str) -> str:
    """Who holds the Lease: the host (a pod's name) and a token of this process's start."""
    return f"{hostname[:200]}_{uuid.uuid4().hex[:10]}"


class DispatchFence:
    def __init__(
        self,
        kube: KubeApi,
        lease: LeaseConfig,
        holder: str,
        *,
        on_acquired: Callable[[], None],
        on_lost: Callable[[], None],
    ) -> None:
        assert lease.namespace is not None, "lease_for() resolves the namespace"
        self.kube = kube
        self.namespace = lease.namespace
        self.name = lease.name
        self.holder = holder
        self.duration = lease.duration_seconds
        self.retry = min(2.0, max(0.2, self.duration / 5))
        self.renew_deadline = self.duration * 2 / 3
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.state: State = "starting"
        self.seen_holder: str | None = None  # the holder as last read (for logs and readiness)
        self._observed: tuple[str, float] | None = None  # resourceVersion, when first seen
        self._renewed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leader(self) -> bool:
        return self.state == "leader"

    def describe(self) -> str:
        """One line for readiness and logs."""
        if self.state == "leader":
            return f"holds the dispatch lease {self.namespace}/{self.name}"
        if self.state == "standby":
            holder = self.seen_holder or "another instance"
            return f"standby: the dispatch lease {self.namespace}/{self.name} is held by {holder}"
        return f"{self.state}: not holding the dispatch lease {self.namespace}/{self.name}"

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mlexp-fence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop; a leader releases the Lease so that a successor need not wait it out."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.state == "leader":
            try:
                self._release()
            except MlexpError as exc:
                log.warning("dispatch lease not released", extra={"error": exc.detail})
        self.state = "stopped"

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.state == "leader":
                    self._keep()
                elif self._acquire():
                    self._won()
            except Exception:  # one bad round must not end the fence
                log.exception("dispatch lease round failed")
            self._stop.wait(self.retry)

    # -- one round -------------------------------------------------------------

    def _acquire(self) -> bool:
        """Take the Lease if it is free, released or expired; False: someone holds it."""
        try:
            current = self.kube.get("Lease", self.namespace, self.name)
            if current is None:
                self.kube.create(self._manifest(None, transitions=0, acquired=True))
                return True
            spec = _spec(current)
            version = str(current["metadata"].get("resourceVersion", ""))
            holder = spec.get("holderIdentity") or None
            now = time.monotonic()
            if self._observed is None or self._observed[0] != version:
                self._observed = (version, now)  # a change: expiry counts from here
            if holder not in (None, self.holder):
                duration = float(spec.get("leaseDurationSeconds") or self.duration)
                if now - self._observed[1] < duration:
                    self._standby(holder)
                    return False
                unchanged = round(now - self._observed[1], 1)
                log.warning(
                    "dispatch lease expired: taking it over",
                    extra={"holder": holder, "unchanged_seconds": unchanged},
                )
            transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.holder)
            self.kube.replace(self._manifest(current, transitions=transitions, acquired=True))
            return True
        except Conflict:
            return False  # another instance wrote first: read again next round
        except MlexpError as exc:
            log.warning("dispatch lease not read", extra={"error": exc.detail})
            return False

    def _won(self) -> None:
        self.state = "leader"
        self.seen_holder = self.holder
        self._renewed = time.monotonic()
        log.info("dispatch lease acquired: dispatching", extra={"holder": self.holder})
        # In a thread of its own: adopting many runs takes a while, renewing must go on.
        threading.Thread(target=self._activate, name="mlexp-fence-start", daemon=True).start()

    def _activate(self) -> None:
        try:
            self.on_acquired()
        except Exception:
            log.exception("starting to dispatch failed")
            self._lose("starting to dispatch failed")

    def _keep(self) -> None:
        """Renew; lose the Lease if another holds it or renewing failed for too long."""
        try:
            current = self.kube.get("Lease", self.namespace, self.name)
            holder = _spec(current).get("holderIdentity") if current is not None else None
            if holder != self.holder:
                self._lose(f"the lease is now held by {holder or 'nobody'}")
                return
            assert current is not None
            self.kube.replace(self._manifest(current, transitions=None, acquired=False))
            self._renewed = time.monotonic()
        except MlexpError as exc:
            late = time.monotonic() - self._renewed
            log.warning(
                "dispatch lease not renewed",
                extra={"error": exc.detail, "seconds_since_renewal": round(late, 1)},
            )
            if late > self.renew_deadline:
                self._lose(f"not renewed for {late:.1f} s")

    def _lose(self, why: str) -> None:
        if self.state != "leader":
            return
        self.state = "standby"
        log.error("dispatch lease lost: %s; stopping", why, extra={"holder": self.holder})
        self.on_lost()

    def _standby(self, holder: str | None) -> None:
        if self.state != "standby" or holder != self.seen_holder:
            log.warning(
                "standing by: the dispatch lease is held by another instance",
                extra={"holder": holder, "lease": f"{self.namespace}/{self.name}"},
            )
        self.state = "standby"
        self.seen_holder = holder

    def _release(self) -> None:
        current = self.kube.get("Lease", self.namespace, self.name)
        if current is None or _spec(current).get("holderIdentity") != self.holder:
            return
        released = self._manifest(current, transitions=None, acquired=False)
        released["spec"]["holderIdentity"] = None
        released["spec"]["leaseDurationSeconds"] = 1
        self.kube.replace(released)
        log.info("dispatch lease released")

    def _manifest(self, current: Obj | None, *, transitions: int | None, acquired: bool) -> Obj:
        now = _micro_time()
        spec: dict[str, Any] = dict(_spec(current)) if current is not None else {}
        spec.update(
            holderIdentity=self.holder,
            leaseDurationSeconds=math.ceil(self.duration),
            renewTime=now,
        )
        if acquired:
            spec["acquireTime"] = now
        if transitions is not None:
            spec["leaseTransitions"] = transitions
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if current is not None:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }


def _spec(lease: Obj | None) -> dict[str, Any]:
    spec = (lease or {}).get("spec")
    return spec if isinstance(spec, dict) else {}


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
