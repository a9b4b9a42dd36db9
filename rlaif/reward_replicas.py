"""Which replica of a reward server takes the next request.

A Kubernetes Service balances connections, not requests: a trainer holding a few keep-alive
connections to a reward Service keeps talking to the same pods however many replicas run.
So the client balances each request itself, over

- every base URL it was given for the reward (a local run's replica processes), and
- every address the URL's host name resolves to: a headless Service (the operator's reward
  Services are headless) resolves to one address per ready pod. The lookup is repeated every
  ``REFRESH_S`` so replicas an autoscaler adds are used within seconds.

The replica with the fewest requests in flight takes the next one (ties broken at random),
and one that just failed to connect is passed over for ``COOL_DOWN_S`` while others exist.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

REFRESH_S = 10.0
COOL_DOWN_S = 2.0


@dataclass
class Replica:
    url: str
    in_flight: int = 0
    failed_until: float = 0.0


class Replicas:
    """The replicas of one reward, refreshed from DNS; ``acquire`` picks one per request."""

    def __init__(self, urls: Sequence[str]):
        if not urls:
            raise ValueError("a reward needs at least one URL")
        self.urls = [u.rstrip("/") for u in urls]
        self._replicas: dict[str, Replica] = {u: Replica(u) for u in self.urls}
        self._resolved_at = float("-inf")

    @property
    def count(self) -> int:
        return len(self._replicas)

    async def refresh(self) -> None:
        """Re-resolve host names (every REFRESH_S at most); keeps in-flight counts."""
        now = time.monotonic()
        if now - self._resolved_at < REFRESH_S:
            return
        self._resolved_at = now
        found: list[str] = []
        for url in self.urls:
            found += await expand(url)
        self._replicas = {u: self._replicas.get(u) or Replica(u) for u in dict.fromkeys(found)}

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Replica]:
        """The least busy healthy replica, counted as busy until the block ends."""
        await self.refresh()
        now = time.monotonic()
        candidates = list(self._replicas.values())
        healthy = [r for r in candidates if r.failed_until <= now] or candidates
        fewest = min(r.in_flight for r in healthy)
        replica = random.choice([r for r in healthy if r.in_flight == fewest])
        replica.in_flight += 1
        try:
            yield replica
        finally:
            replica.in_flight -= 1

    @staticmethod
    def failed(replica: Replica) -> None:
        """Pass this replica over for a moment (it refused or dropped a connection)."""
        replica.failed_until = time.monotonic() + COOL_DOWN_S


async def expand(url: str) -> list[str]:
    """``url`` once per IPv4 address its host resolves to (IPv6 if it has none); the URL
    itself when the host is an address or ``localhost``, or when it does not resolve (the
    request then reports the failure)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or host == "localhost" or _is_address(host):
        return [url]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port, type=socket.SOCK_STREAM)
    except OSError:
        return [url]
    v4 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET]
    addresses = list(dict.fromkeys(v4 or [str(i[4][0]) for i in infos]))
    if len(addresses) < 2:
        return [url]  # one address: keep the name (a ClusterIP Service, a plain host)
    return [_with_host(parts, str(a)) for a in addresses]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _with_host(parts: SplitResult, address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
