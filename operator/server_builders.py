"""RewardServer -> Deployment, headless Service, (replicas > 1) PodDisruptionBudget and
(spec.autoscaling) HorizontalPodAutoscaler.

Pure functions from a validated RewardServer to child manifests; no API calls.
"""

from __future__ import annotations

import functools
import json

from rlaif import constants as c
from rlaif.api.labels import LabelSchema
from rlaif.api.models import RewardServer
from rlaif.config import dump_yaml
from rlaif.operator import meta
from rlaif.operator.meta import Manifest

COMPONENT = "reward-server"
LABELS_FILE = "labels.yaml"
LABELS_VOLUME = "label-schema"


def server_labels(server: RewardServer) -> dict[str, str]:
    """Pod labels; a job-owned server's pods also carry the job label (its NetworkPolicy)."""
    extra = {c.LABEL_SERVER: server.metadata.name}
    if job := server.metadata.labels.get(c.LABEL_JOB):
        extra[c.LABEL_JOB] = job
    return meta.labels(COMPONENT, server.metadata.name, **extra)


def server_selector(server: RewardServer) -> dict[str, str]:
    return meta.selector(COMPONENT, server.metadata.name)


def selector_string(server: RewardServer) -> str:
    """status.selector for the scale subresource (what an HPA uses to find the pods)."""
    return ",".join(f"{k}={v}" for k, v in server_selector(server).items())


def endpoint(name: str, namespace: str | None) -> str:
    """The in-cluster URL of a RewardServer's Service."""
    host = f"{name}.{namespace}.svc" if namespace else name
    return f"http://{host}:{c.REWARD_PORT}"


def serve_args(server: RewardServer) -> list[str]:
    spec = server.spec
    args = ["reward", "serve", "--kind", spec.kind, "--model", spec.model,
            "--port", str(c.REWARD_PORT), "--max-batch", str(spec.max_batch),
            "--max-wait-ms", str(spec.max_wait_ms)]
    if uses_label_schema(server):
        args += ["--label-schema", f"{c.CONFIG_DIR}/{LABELS_FILE}"]
    if spec.judge is not None:
        args += spec.judge.serve_args()
    return args


def uses_label_schema(server: RewardServer) -> bool:
    """Only the judge classifies prosody labels, so only it gets the job's schema."""
    return server.spec.kind == "judge"


def label_schema_yaml(schema: LabelSchema) -> str:
    """A LabelSchema as the YAML file ``--label-schema`` reads."""
    return _schema_yaml(schema.model_dump_json(by_alias=True))


@functools.lru_cache(maxsize=256)
def _schema_yaml(schema_json: str) -> str:
    """Rendered once per schema: a cluster's jobs mostly share a few, and every reconciliation
    of a judge builds its ConfigMap to compare with the stored one."""
    return dump_yaml(json.loads(schema_json))


def build_label_config(server: RewardServer) -> Manifest | None:
    """The judge's label schema as a ConfigMap (same name as the server)."""
    if not uses_label_schema(server):
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(server.metadata.name, server.metadata.namespace,
                                  server_labels(server)),
        "data": {LABELS_FILE: label_schema_yaml(server.spec.label_schema)},
    }


def _probe(path: str, period: int, failures: int) -> Manifest:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": 5}


def build_deployment(server: RewardServer, replicas: int | None = None) -> Manifest:
    """The server pods; ``replicas`` overrides the spec (0 while the owning job is suspended)."""
    spec, name = server.spec, server.metadata.name
    mounts, volumes = list(spec.volume_mounts), list(spec.volumes)
    if uses_label_schema(server):
        mounts.append({"name": LABELS_VOLUME, "mountPath": c.CONFIG_DIR, "readOnly": True})
        volumes.append({"name": LABELS_VOLUME, "configMap": {"name": name}})
    box = meta.container("server", spec.image, serve_args(server), resources=spec.resources,
                         env=spec.judge.env() if spec.judge else None, mounts=mounts)
    box["ports"] = [{"name": "http", "containerPort": c.REWARD_PORT, "protocol": "TCP"}]
    box["readinessProbe"] = _probe("/readyz", 5, 3)
    box["livenessProbe"] = _probe("/healthz", 10, 6)
    # Loading a large model can take minutes; liveness starts counting once it is up.
    box["startupProbe"] = _probe("/healthz", 5, 120)
    lbls = server_labels(server)
    if queue := server.metadata.labels.get(meta.KUEUE_QUEUE_LABEL):
        lbls[meta.KUEUE_QUEUE_LABEL] = queue  # Kueue admits the pods: no GPUs outside quota
    template = meta.apply_pod_template(
        {"metadata": {"labels": lbls}, "spec": meta.pod_spec([box], volumes)}, spec.pod_template)
    body_meta = meta.metadata(name, server.metadata.namespace, lbls)
    body_meta["annotations"] = {meta.TEMPLATE_HASH_ANNOTATION: meta.template_hash(template)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": body_meta,
        "spec": {
            "replicas": spec.replicas if replicas is None else replicas,
            "selector": {"matchLabels": server_selector(server)},
            "template": template,
        },
    }


def build_service(server: RewardServer) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(server.metadata.name, server.metadata.namespace,
                                  server_labels(server)),
        "spec": {  # headless: the name resolves to each ready pod, and the reward client
            "clusterIP": "None",  # balances requests over them (kube-proxy would balance
            "selector": server_selector(server),  # connections only)
            "ports": [{"name": "http", "port": c.REWARD_PORT, "targetPort": "http",
                       "protocol": "TCP"}],
        },
    }


def build_pdb(server: RewardServer) -> Manifest | None:
    """Keep all but one replica through voluntary disruptions; none for a single replica."""
    if server.spec.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta.metadata(server.metadata.name, server.metadata.namespace,
                                  server_labels(server)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": server_selector(server)}},
    }


def build_hpa(server: RewardServer) -> Manifest | None:
    """An autoscaling/v2 HPA that scales the RewardServer through its scale subresource (the
    Deployment follows spec.replicas, so the operator and the HPA never disagree), on the
    per-pod average of a Pods metric (prometheus-adapter or KEDA serve it from /metrics).
    None without spec.autoscaling, or when an external autoscaler owns the replicas."""
    scaling = server.spec.autoscaling
    if scaling is None or scaling.external:
        return None
    metric = scaling.hpa_metric
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta.metadata(server.metadata.name, server.metadata.namespace,
                                  server_labels(server)),
        "spec": {
            "scaleTargetRef": {"apiVersion": c.API_VERSION, "kind": c.SERVER_KIND,
                               "name": server.metadata.name},
            "minReplicas": scaling.hpa_min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": metric.name},
                "target": {"type": "AverageValue", "averageValue": metric.target_average_value},
            }}],
        },
    }
