"""Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does:
replicas race to hold the Lease, the holder renews it, and only the holder reconciles. A
holder that stops renewing (crashed, partitioned) loses it after ``lease_seconds``; every
write carries the Lease's resourceVersion, so two replicas cannot both win a takeover.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from rlaif.operator.conditions import parse_time
from rlaif.operator.kube import ApiError, Kube, Manifest

log = logging.getLogger("rlaif.operator")
LEASE = ("coordination.k8s.io/v1", "Lease")


def _micro(now: datetime) -> str:
    """A Lease's MicroTime."""
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Elector:
    """One replica's view of the Lease; ``leading`` is what the handlers check."""

    kube: Kube
    namespace: str
    name: str
    identity: str
    lease_seconds: int = 15
    leading: threading.Event = field(default_factory=threading.Event)
    _stepped: bool = False

    def _held_by_other(self, lease: Manifest, now: datetime) -> bool:
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = parse_time(spec.get("renewTime"))
        duration = spec.get("leaseDurationSeconds") or self.lease_seconds
        return bool(holder) and holder != self.identity and renewed is not None and \
            now < renewed + timedelta(seconds=duration)

    def _claim(self, lease: Manifest | None, now: datetime) -> Manifest:
        """The Lease as stored after taking or renewing it (a create that lost the race
        returns the winner's; a renewal that lost it fails with 409)."""
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "renewTime": _micro(now)}
        if lease is None:
            return self.kube.create({"apiVersion": LEASE[0], "kind": LEASE[1], "metadata": {
                "name": self.name, "namespace": self.namespace},
                "spec": {**spec, "acquireTime": _micro(now), "leaseTransitions": 0}})
        old = lease.get("spec") or {}
        if old.get("holderIdentity") != self.identity:  # a takeover
            spec.update(acquireTime=_micro(now),
                        leaseTransitions=int(old.get("leaseTransitions") or 0) + 1)
        return self.kube.patch(*LEASE, self.namespace, self.name, {
            "metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")},
            "spec": spec}) or {}

    def step(self, now: datetime | None = None) -> bool:
        """Acquire or renew once; whether this replica leads now."""
        now = now or datetime.now(timezone.utc)
        try:
            lease = self.kube.get(*LEASE, self.namespace, self.name)
            if lease is not None and self._held_by_other(lease, now):
                leads = False
            else:
                stored = self._claim(lease, now)
                leads = (stored.get("spec") or {}).get("holderIdentity") == self.identity
        except ApiError as exc:  # 409: another replica won the race; else retry next step
            log.info("leader election: %s", exc)
            leads = False
        if leads != self.leading.is_set() or not self._stepped:
            self._stepped = True
            log.info("leader election: %s %s the lease %s/%s", self.identity,
                     "now holds" if leads else "does not hold", self.namespace, self.name)
        (self.leading.set if leads else self.leading.clear)()
        return leads

    def release(self) -> None:
        """Give the Lease up at shutdown, so a successor need not wait for it to expire."""
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            self.kube.patch(*LEASE, self.namespace, self.name, {"spec": {"holderIdentity": ""}})
        except ApiError as exc:
            log.info("leader election: could not release the lease: %s", exc)

    def run(self, stop: threading.Event) -> None:
        """Renew every third of the lease until ``stop``, then release it."""
        while not stop.is_set():
            self.step()
            stop.wait(self.lease_seconds / 3)
        self.release()
