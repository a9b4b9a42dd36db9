"""How the operator scales with the number of jobs, against the Kubernetes emulator.

For 1, 10 and 100 RLAIFJobs (the quickstart, 3 rewards each) applied at once with the real
kubectl, a fresh emulator and operator process each time:

- seconds ``kubectl apply`` itself takes, and from its start until every job's first children
  exist (ConfigMap, NetworkPolicy, 3 RewardServers with their Deployments and Services);
- seconds from the reward Deployments turning ready until every trainer Job exists;
- API requests per job to get there, and per job per minute at rest afterwards (with the
  requests at rest by verb: watches are long-lived and count once per connection), not
  counting the leader-election Lease's renewals, which are per operator and shown apart;
- the operator's CPU time per job until the trainers exist (what the operator itself costs,
  independent of the emulator's speed, which bounds the wall-clock figures);
- the operator process's resident memory and CPU use at rest, and the machine's load average
  (the figures are only comparable at similar load).

The emulator answers in about 1 ms and runs in this process; the figures measure the
operator's own work, not a real API server's latency. Run:

    .venv/bin/python benchmarks/operator_scale.py [--jobs 1,10,100,1000] [--interval 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.operator_emulator import REPO, EmulatedCluster, wait_for
from rlaif import constants as c
from rlaif.api.models import RewardServer, RLAIFJob
from rlaif.operator import job_builders as jb
from rlaif.operator import server_builders as sb

NS = "bench"
LEASE_SECONDS = 15
"""The chart's leader-election Lease (renewed every 5 s): per operator, not per job."""
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


FIRST_CHILDREN = {"configmaps", "networkpolicies", c.SERVER_PLURAL, "deployments", "services"}


def _proc(pid: int) -> tuple[float, float]:
    """(resident MiB, CPU seconds) of a process, from /proc."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:")) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def measure(n: int, interval: float, rest_seconds: float) -> dict[str, Any]:
    per_job = _first_children_per_job()
    with tempfile.TemporaryDirectory() as tmp, EmulatedCluster(Path(tmp)) as cluster:
        kube = cluster.client()
        cluster.kubectl("apply", "--validate=false", "-f", str(REPO / "manifests" / "crds"))
        # Pods never start here: no start timeout may fail the jobs while we measure.
        operator = cluster.start_operator(Path(tmp) / "operator.log", interval=interval,
                                          RLAIF_START_TIMEOUT="86400",
                                          RLAIF_LEASE_SECONDS=str(LEASE_SECONDS))
        try:
            time.sleep(3)  # kopf's start-up (imports, discovery), not per-job work
            emu = cluster.emulator
            assert emu is not None
            start_requests, (_, cpu_start) = emu.operator_requests, _proc(operator.pid)
            t0 = time.monotonic()
            cluster.kubectl("apply", "--validate=false", "-f", "-", stdin=_jobs_yaml(n),
                            timeout=1800)
            applied = time.monotonic() - t0
            poll = 0.1
            wait_for(lambda: cluster.count(FIRST_CHILDREN, NS) >= n * per_job, timeout=600,
                     what="first children", interval=poll)
            first = time.monotonic() - t0
            for dep in kube.list("apps/v1", "Deployment", NS, {}):
                kube.patch("apps/v1", "Deployment", NS, dep["metadata"]["name"],
                           {"status": {"replicas": 1, "readyReplicas": 1}}, "status")
            t1 = time.monotonic()
            wait_for(lambda: cluster.count({"jobs"}, NS) >= n, timeout=600,
                     what="trainer Jobs", interval=poll)
            trainers = time.monotonic() - t1
            to_trainers = emu.operator_requests - start_requests
            cpu_to_trainers = _proc(operator.pid)[1] - cpu_start
            time.sleep(interval)  # let the last status writes settle
            rest_start, (_, cpu0), w0 = emu.operator_requests, _proc(operator.pid), \
                time.monotonic()
            verbs0, leases0 = dict(emu.operator_verbs), emu.operator_resources["leases"]
            time.sleep(rest_seconds)
            rss, cpu1 = _proc(operator.pid)
            wall = time.monotonic() - w0
            leases = emu.operator_resources["leases"] - leases0
            rest = emu.operator_requests - rest_start - leases
            verbs = {v: k - verbs0.get(v, 0) for v, k in emu.operator_verbs.items()
                     if k != verbs0.get(v, 0)}
        finally:
            cluster.stop_operator()
    return {"jobs": n, "kubectl_apply_s": applied, "first_children_s": first,
            "trainers_after_ready_s": trainers,
            "requests_per_job_to_trainer": to_trainers / n,
            "cpu_ms_per_job_to_trainer": 1000 * cpu_to_trainers / n,
            "requests_per_job_per_min_at_rest": rest / n / wall * 60,
            "lease_requests_per_min": leases / wall * 60,
            "rss_mib": rss, "cpu_percent_at_rest": 100 * (cpu1 - cpu0) / wall,
            "load": os.getloadavg()[0],
            "verbs_at_rest": " ".join(f"{v}:{k}" for v, k in sorted(verbs.items())) or "-"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="1,10,100", help="comma-separated job counts")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="reconcile interval in seconds (the chart's default is 30)")
    parser.add_argument("--rest-seconds", type=float, default=30.0,
                        help="how long to measure the operator at rest")
    args = parser.parse_args()
    header = ("jobs", "kubectl apply s", "first children s", "trainers after ready s",
              "requests/job to trainer", "operator CPU ms/job to trainer",
              "requests/job/min at rest", "Lease requests/min", "RSS MiB", "CPU % at rest",
              "load (1 min)", "requests at rest by verb (Lease included)")
    print(f"# operator scale, reconcile interval {args.interval:g} s, "
          f"{os.cpu_count()} CPU(s)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header), flush=True)
    for n in args.jobs.split(","):
        r = measure(int(n), args.interval, args.rest_seconds)
        print(f"| {r['jobs']:.0f} | {r['kubectl_apply_s']:.2f} | {r['first_children_s']:.2f} | "
              f"{r['trainers_after_ready_s']:.2f} | {r['requests_per_job_to_trainer']:.0f} | "
              f"{r['cpu_ms_per_job_to_trainer']:.0f} | "
              f"{r['requests_per_job_per_min_at_rest']:.2f} | "
              f"{r['lease_requests_per_min']:.0f} | {r['rss_mib']:.0f} | "
              f"{r['cpu_percent_at_rest']:.1f} | {r['load']:.1f} | {r['verbs_at_rest']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
