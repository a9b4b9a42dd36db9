"""How the operator scales with the number of jobs, against the Kubernetes emulator.

For 1, 10 and 100 RLAIFJobs (the quickstart, 3 rewards each) applied at once with the real
kubectl, a fresh emulator and operator process each time:

- seconds from ``kubectl apply`` until every job's first children exist (ConfigMap,
  NetworkPolicy, 3 RewardServers with their Deployments and Services);
- seconds from the reward Deployments turning ready until every trainer Job exists;
- API requests per job to get there, and per job per minute at rest afterwards;
- the operator process's resident memory and CPU use at rest.

The emulator answers in about 1 ms and runs in this process; the figures measure the
operator's own work, not a real API server's latency. Run:

    .venv/bin/python benchmarks/operator_scale.py [--jobs 1,10,100] [--interval 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.operator_emulator import REPO, EmulatedCluster, wait_for
from rlaif import constants as c
from rlaif.api.models import RewardServer, RLAIFJob
from rlaif.operator import job_builders as jb
from rlaif.operator import server_builders as sb
from rlaif.operator.kube import Kube

NS = "bench"
EXAMPLE = REPO / "examples" / "quickstart-cpu.yaml"


def _first_children_per_job() -> int:
    """ConfigMap and NetworkPolicy, and per owned reward server: the RewardServer, its
    Deployment, Service and (judges) label-schema ConfigMap."""
    job = RLAIFJob.model_validate({**yaml.safe_load(EXAMPLE.read_text()),
                                   "metadata": {"name": "x", "namespace": NS}})
    servers = [RewardServer.model_validate(s) for s in jb.build_reward_servers(job)]
    return 2 + sum(3 + (sb.build_label_config(s) is not None) for s in servers)


def _jobs_yaml(n: int) -> str:
    doc = yaml.safe_load(EXAMPLE.read_text())
    docs = []
    for i in range(n):
        d = yaml.safe_load(yaml.safe_dump(doc))
        d["metadata"] = {"name": f"job-{i:03d}", "namespace": NS}
        docs.append(d)
    return yaml.safe_dump_all(docs)


def _count(kube: Kube, api_version: str, kind: str) -> int:
    return len(kube.list(api_version, kind, NS, {}))


def _first_children(kube: Kube) -> int:
    return sum(_count(kube, av, k) for av, k in [
        ("v1", "ConfigMap"), ("networking.k8s.io/v1", "NetworkPolicy"),
        (c.API_VERSION, c.SERVER_KIND), ("apps/v1", "Deployment"), ("v1", "Service")])


def _proc(pid: int) -> tuple[float, float]:
    """(resident MiB, CPU seconds) of a process, from /proc."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:")) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def measure(n: int, interval: float, rest_seconds: float) -> dict[str, float]:
    per_job = _first_children_per_job()
    with tempfile.TemporaryDirectory() as tmp, EmulatedCluster(Path(tmp)) as cluster:
        kube = cluster.client()
        cluster.kubectl("apply", "--validate=false", "-f", str(REPO / "manifests" / "crds"))
        # Pods never start here: no start timeout may fail the jobs while we measure.
        operator = cluster.start_operator(Path(tmp) / "operator.log", interval=interval,
                                          RLAIF_START_TIMEOUT="86400")
        try:
            time.sleep(3)  # kopf's start-up (imports, discovery), not per-job work
            emu = cluster.emulator
            assert emu is not None
            start_requests = emu.operator_requests
            t0 = time.monotonic()
            cluster.kubectl("apply", "--validate=false", "-f", "-", stdin=_jobs_yaml(n))
            wait_for(lambda: _first_children(kube) >= n * per_job, timeout=600,
                     what="first children", interval=0.2)
            first = time.monotonic() - t0
            for dep in kube.list("apps/v1", "Deployment", NS, {}):
                kube.patch("apps/v1", "Deployment", NS, dep["metadata"]["name"],
                           {"status": {"replicas": 1, "readyReplicas": 1}}, "status")
            t1 = time.monotonic()
            wait_for(lambda: _count(kube, "batch/v1", "Job") >= n, timeout=600,
                     what="trainer Jobs", interval=0.2)
            trainers = time.monotonic() - t1
            to_trainers = emu.operator_requests - start_requests
            time.sleep(interval)  # let the last status writes settle
            rest_start, (_, cpu0), w0 = emu.operator_requests, _proc(operator.pid), \
                time.monotonic()
            time.sleep(rest_seconds)
            rss, cpu1 = _proc(operator.pid)
            wall = time.monotonic() - w0
            rest = emu.operator_requests - rest_start
        finally:
            cluster.stop_operator()
    return {"jobs": n, "first_children_s": first, "trainers_after_ready_s": trainers,
            "requests_per_job_to_trainer": to_trainers / n,
            "requests_per_job_per_min_at_rest": rest / n / wall * 60,
            "rss_mib": rss, "cpu_percent_at_rest": 100 * (cpu1 - cpu0) / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="1,10,100", help="comma-separated job counts")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="reconcile interval in seconds (the chart's default is 30)")
    parser.add_argument("--rest-seconds", type=float, default=30.0,
                        help="how long to measure the operator at rest")
    args = parser.parse_args()
    rows = [measure(int(n), args.interval, args.rest_seconds) for n in args.jobs.split(",")]
    header = ("jobs", "first children s", "trainers after ready s", "requests/job to trainer",
              "requests/job/min at rest", "RSS MiB", "CPU % at rest")
    print(f"# operator scale, reconcile interval {args.interval:g} s, "
          f"{os.cpu_count()} CPU(s)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['jobs']:.0f} | {r['first_children_s']:.2f} | "
              f"{r['trainers_after_ready_s']:.2f} | {r['requests_per_job_to_trainer']:.0f} | "
              f"{r['requests_per_job_per_min_at_rest']:.0f} | {r['rss_mib']:.0f} | "
              f"{r['cpu_percent_at_rest']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
