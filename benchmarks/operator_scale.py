"""How the operator scales with the number of jobs, against the Kubernetes emulator.

For 1, 10, 100 and 1,000 RLAIFJobs (the quickstart, 3 rewards each), a fresh emulator and
operator process each time, the jobs created at once by concurrent POSTs (16 client threads)
to the emulator's API:

- per job, from the moment the emulator stored the job to the moment it stored the last of
  the job's children: its first children (ConfigMap, NetworkPolicy, 3 RewardServers and their
  Deployments, Services and label-schema ConfigMap) and all of them (then the trainer Service
  and Job too), as p50 / p95 / max; and the wall time from the first POST until every job
  has all of them. The emulator acts as a Deployment controller whose pods start at once
  (``instant_rollout``), so the way to the trainer Job is the operator's alone: watch the
  Deployment turn ready, write the RewardServer's status, wake the job, create the trainer.
  The timestamps are the emulator's own (it runs in this process), so neither the clients
  nor the polling here are in them;
- API requests and operator CPU time per job to get there;
- per job per minute at rest afterwards, the API requests (by verb: watches are long-lived
  and count once per connection), not counting the leader-election Lease's renewals, which
  are per operator and shown apart;
- the operator process's resident memory and CPU use at rest, and the machine's load average
  when each figure was taken (the figures are only comparable at similar load).

The emulator (kmock, one asyncio thread, in this process) answers a request in about 1 ms,
whatever the number of objects; on a loaded machine it is still the slower side at scale,
and the operator's CPU seconds per job say what the operator itself costs. Run:

    .venv/bin/python benchmarks/operator_scale.py [--jobs 1,10,100,1000] [--interval 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.operator_emulator import REPO, EmulatedCluster, Emulator, wait_for
from rlaif import constants as c

NS = "bench"
LEASE_SECONDS = 15
"""The chart's leader-election Lease (renewed every 5 s): per operator, not per job."""
EXAMPLE = REPO / "examples" / "quickstart-cpu.yaml"
CLIENTS = 16
"""Threads POSTing the jobs."""
FIRST = {"configmaps", "networkpolicies", c.SERVER_PLURAL}
"""A job's own first children; with its servers' children, what it has before its servers
are ready (the trainer Service and Job come after)."""


def _create_jobs(cluster: EmulatedCluster, n: int) -> float:
    """POST ``n`` quickstart jobs from CLIENTS threads; the seconds it took."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    kube = cluster.client(pool=CLIENTS)

    def create(i: int) -> None:
        kube.create({**doc, "metadata": {"name": f"job-{i:04d}", "namespace": NS}})

    start = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(create, range(n)))
    return time.monotonic() - start


def _latencies(emu: Emulator, n: int) -> tuple[list[float], list[float], set[int]]:
    """Per job: seconds from its creation to its last first child, and to its last child
    (its servers' children included); and the numbers of children the jobs have."""
    created = dict(emu.created)
    owned: dict[tuple[str, str], list[tuple[str, str, float]]] = {}
    for (plural, ns, name), made in created.items():
        if ns == NS and made.owner is not None:
            owned.setdefault(made.owner, []).append((plural, name, made.at))
    first, every, counts = [], [], set()
    for i in range(n):
        name = f"job-{i:04d}"
        own = owned.get((c.JOB_KIND, name), [])
        early = [at for plural, _, at in own if plural in FIRST]
        for plural, server, _ in own:
            if plural == c.SERVER_PLURAL:
                early += [at for _, _, at in owned.get((c.SERVER_KIND, server), [])]
        start = created[(c.JOB_PLURAL, NS, name)].at
        first.append(max(early) - start)
        every.append(max(early + [at for _, _, at in own]) - start)
        counts.add(len(early) + len(own) - sum(plural in FIRST for plural, _, _ in own))
    return first, every, counts


def _proc(pid: int) -> tuple[float, float]:
    """(resident MiB, CPU seconds) of a process, from /proc."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:")) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def _spread(values: list[float]) -> str:
    """p50 / p95 / max."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.2f} / {p95:.2f} / {ordered[-1]:.2f}"


def measure(n: int, interval: float, rest_seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, EmulatedCluster(Path(tmp)) as cluster:
        emu = cluster.emulator
        assert emu is not None
        emu.instant_rollout = True
        cluster.kubectl("apply", "--validate=false", "-f", str(REPO / "manifests" / "crds"))
        # Pods never start here: no start timeout may fail the jobs while we measure.
        operator = cluster.start_operator(Path(tmp) / "operator.log", interval=interval,
                                          RLAIF_START_TIMEOUT="86400",
                                          RLAIF_LEASE_SECONDS=str(LEASE_SECONDS))
        try:
            # The operator's start-up (imports, discovery, the first lists), not per-job
            # work: until it leads and has opened no new watch for 2 s.
            wait_for(lambda: any(k[0] == "leases" for k in list(emu.created)), timeout=120,
                     what="the operator's Lease")
            watches = 0
            while not watches or watches != emu.operator_verbs["watch"]:
                watches = emu.operator_verbs["watch"]
                time.sleep(2)
            start_requests, (_, cpu_start) = emu.operator_requests, _proc(operator.pid)
            t0 = time.monotonic()
            created_s = _create_jobs(cluster, n)
            load_created = os.getloadavg()[0]
            wait_for(lambda: cluster.count({"jobs"}, NS) >= n, timeout=1800,
                     what="every trainer Job", interval=0.2)
            wall = time.monotonic() - t0
            load_done = os.getloadavg()[0]
            to_trainers = emu.operator_requests - start_requests
            cpu_to_trainers = _proc(operator.pid)[1] - cpu_start
            first, every, counts = _latencies(emu, n)
            # Let the last status writes, and the Events that wait for a quiet operator
            # (up to 5 s), settle.
            time.sleep(interval + 5)
            rest_start, (_, cpu0), w0 = emu.operator_requests, _proc(operator.pid), \
                time.monotonic()
            verbs0, leases0 = dict(emu.operator_verbs), emu.operator_resources["leases"]
            time.sleep(rest_seconds)
            rss, cpu1 = _proc(operator.pid)
            rest_wall = time.monotonic() - w0
            leases = emu.operator_resources["leases"] - leases0
            rest = emu.operator_requests - rest_start - leases
            verbs = {v: k - verbs0.get(v, 0) for v, k in emu.operator_verbs.items()
                     if k != verbs0.get(v, 0)}
        finally:
            cluster.stop_operator()
    return {"jobs": n, "create_s": created_s, "first": _spread(first), "all": _spread(every),
            "wall_s": wall, "children": "/".join(str(k) for k in sorted(counts)),
            "requests_per_job_to_trainer": to_trainers / n,
            "cpu_ms_per_job_to_trainer": 1000 * cpu_to_trainers / n,
            "requests_per_job_per_min_at_rest": rest / n / rest_wall * 60,
            "lease_requests_per_min": leases / rest_wall * 60,
            "rss_mib": rss, "cpu_percent_at_rest": 100 * (cpu1 - cpu0) / rest_wall,
            "load": f"{load_created:.1f} / {load_done:.1f} / {os.getloadavg()[0]:.1f}",
            "verbs_at_rest": " ".join(f"{v}:{k}" for v, k in sorted(verbs.items())) or "-"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="1,10,100,1000", help="comma-separated job counts")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="reconcile interval in seconds (the chart's default is 30)")
    parser.add_argument("--rest-seconds", type=float, default=30.0,
                        help="how long to measure the operator at rest")
    args = parser.parse_args()
    header = ("jobs", f"POST of the jobs ({CLIENTS} threads) s",
              "job -> first children s (p50 / p95 / max)",
              "job -> all children s (p50 / p95 / max)", "children per job",
              "first POST -> every trainer Job s", "requests/job to trainer",
              "operator CPU ms/job to trainer", "requests/job/min at rest",
              "Lease requests/min", "RSS MiB", "CPU % at rest",
              "load (1 min): created / all children / at rest",
              "requests at rest by verb (Lease included)")
    print(f"# operator scale, reconcile interval {args.interval:g} s, "
          f"{os.cpu_count()} CPU(s); jobs created by concurrent POSTs, latency from the "
          "emulator's own creation times")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    for n in args.jobs.split(","):
        r = measure(int(n), args.interval, args.rest_seconds)
        print(f"| {r['jobs']:.0f} | {r['create_s']:.2f} | {r['first']} | {r['all']} | "
              f"{r['children']} | {r['wall_s']:.2f} | {r['requests_per_job_to_trainer']:.0f} | "
              f"{r['cpu_ms_per_job_to_trainer']:.0f} | "
              f"{r['requests_per_job_per_min_at_rest']:.2f} | "
              f"{r['lease_requests_per_min']:.0f} | {r['rss_mib']:.0f} | "
              f"{r['cpu_percent_at_rest']:.1f} | {r['load']} | {r['verbs_at_rest']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
