"""RLAIFJob -> its children: ConfigMap, headless Service, trainer Job, owned RewardServers,
NetworkPolicy and the labelling Job. Pure functions of a validated job; no API calls.

The trainer is an Indexed batch Job (one pod per node) behind a headless Service: the
Job controller gives each pod a stable host name ``<job>-<index>.<service>`` and its node
rank, and the operator restarts the whole gang as a new Job (``-trainer-<attempt>``) when
any pod fails, so every rank resumes from the same newest checkpoint.
"""

from __future__ import annotations

import hashlib
import threading

from rlaif import constants as c
from rlaif.api.models import RewardServer, RewardServerSpec, RLAIFJob, RLAIFJobSpec
from rlaif.config import RewardEndpoint, TrainerConfig
from rlaif.operator import meta
from rlaif.operator.meta import Manifest
from rlaif.operator.server_builders import endpoint, label_schema_yaml

TRAINER = "trainer"
LABELER = "labeler"
CONFIG_VOLUME = "config"
SHM_VOLUME = "dshm"
OUTPUT_DIR = f"{c.CHECKPOINT_DIR}/output"
LABELS_FILE = "labels.yaml"
API_KEY_ENV = "OPENAI_API_KEY"
ATTEMPT_LABEL = f"{c.GROUP}/attempt"
"""The gang attempt a trainer Job runs; the operator derives the current attempt from it."""
TERMINATION_GRACE_SECONDS = 600
"""Time a trainer gets after SIGTERM (suspend, delete) to write its checkpoint."""

# Rendezvous race: pod 0's DNS name exists only once it has an IP. Every rank waits for it
# before starting the launcher, instead of failing and burning a gang restart; as long as the
# operator's start timeout (rank 0 may wait that long for a node).
WAIT_ENV = "RLAIF_RANK0_WAIT_SECONDS"
WAIT_FOR_MASTER = """\
import os, socket, sys, time
host, limit = os.environ["MASTER_ADDR"], int(os.environ["RLAIF_RANK0_WAIT_SECONDS"])
deadline = time.monotonic() + limit
while True:
    try:
        socket.getaddrinfo(host, None)
        sys.exit(0)
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"rank-0 address {host} did not resolve within {limit} s")
        time.sleep(2)
"""
DEFAULT_WAIT_SECONDS = 1800
"""The operator's default start timeout (settings.OperatorConfig.start_timeout)."""
POD_GROUPS = {
    # gangScheduling: (apiVersion, how pods name their group: label or annotation key)
    "volcano": ("scheduling.volcano.sh/v1beta1", "scheduling.k8s.io/group-name"),
    "coscheduling": ("scheduling.x-k8s.io/v1alpha1", "scheduling.x-k8s.io/pod-group"),
}


# --------------------------------------------------------------------------- names


def config_name(job: RLAIFJob) -> str:
    return meta.child_name(job.metadata.name, "config")


def trainer_service_name(job: RLAIFJob) -> str:
    return meta.child_name(job.metadata.name, TRAINER)


def trainer_job_name(job: RLAIFJob, attempt: int) -> str:
    # Pod host names are "<job>-<index>" and must stay within 63 characters.
    return meta.child_name(job.metadata.name, f"{TRAINER}-{attempt}", limit=56)


def labeling_job_name(job: RLAIFJob) -> str:
    return meta.child_name(job.metadata.name, "label")


def network_policy_name(job: RLAIFJob) -> str:
    return meta.child_name(job.metadata.name, "rewards")


def reward_server_name(job: RLAIFJob, reward_name: str) -> str:
    """The RewardServer a reward uses: its serverRef, or the one the job owns."""
    reward = next(r for r in [*job.spec.rewards, *job.spec.evaluators()]
                  if r.name == reward_name)
    if reward.server_ref is not None:
        return reward.server_ref.name
    return meta.child_name(job.metadata.name, reward.name)


def master_addr(job: RLAIFJob, attempt: int) -> str:
    """Rank 0's stable DNS name through the headless Service."""
    host = f"{trainer_job_name(job, attempt)}-0.{trainer_service_name(job)}"
    return f"{host}.{job.metadata.namespace}.svc" if job.metadata.namespace else host


# --------------------------------------------------------------------------- config


def reward_endpoints(job: RLAIFJob, evaluators: bool = False) -> list[RewardEndpoint]:
    """The training rewards' servers, or (``evaluators``) spec.evaluation's (weight 0)."""
    return [RewardEndpoint(name=r.name, kind=r.kind, weight=r.weight,
                           url=endpoint(reward_server_name(job, r.name), job.metadata.namespace))
            for r in (job.spec.evaluators() if evaluators else job.spec.rewards)]


def trainer_config(job: RLAIFJob) -> TrainerConfig:
    """What ``rlaif train`` reads in the pods; outputs go under the checkpoint volume."""
    return TrainerConfig(job_name=job.metadata.name, namespace=job.metadata.namespace,
                         spec=job.spec, rewards=reward_endpoints(job),
                         evaluators=reward_endpoints(job, evaluators=True), output_dir=OUTPUT_DIR,
                         checkpoint_dir=c.CHECKPOINT_DIR,
                         metrics_port=job.spec.trainer.metrics_port)


def _labels(job: RLAIFJob, component: str) -> dict[str, str]:
    return meta.labels(component, job.metadata.name, **{c.LABEL_JOB: job.metadata.name})


CONFIG_CACHE_SIZE = 4096
"""Jobs whose rendered config files are kept (a few KiB each), oldest out first."""
_config_files: dict[str, tuple[str, str]] = {}
_config_lock = threading.Lock()


def _rendered_config(job: RLAIFJob) -> tuple[str, str]:
    """(trainer.yaml, labels.yaml) of ``job``, rendered once per spec of the job (they
    depend on its name, namespace and spec only, not on its status): YAML rendering was most
    of a reconciliation's CPU, and every visit rendered the same again."""
    key = hashlib.sha256(f"{job.metadata.namespace}/{job.metadata.name}/"
                         f"{job.spec.model_dump_json()}".encode()).hexdigest()
    with _config_lock:
        if (files := _config_files.get(key)) is not None:
            return files
    files = (trainer_config(job).dump(), label_schema_yaml(job.spec.label_schema))
    with _config_lock:
        if len(_config_files) >= CONFIG_CACHE_SIZE:
            del _config_files[next(iter(_config_files))]  # the oldest
        _config_files[key] = files
    return files


def build_config_map(job: RLAIFJob) -> Manifest:
    """trainer.yaml (what ``rlaif train`` reads) and the label schema for ``rlaif label``."""
    trainer_yaml, labels_yaml = _rendered_config(job)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(config_name(job), job.metadata.namespace,
                                  _labels(job, "config")),
        "data": {c.CONFIG_FILE: trainer_yaml, LABELS_FILE: labels_yaml},
    }


# --------------------------------------------------------------------------- trainer


def build_trainer_service(job: RLAIFJob) -> Manifest:
    """Headless: gives every trainer pod a DNS name before it is ready (rendezvous)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(trainer_service_name(job), job.metadata.namespace,
                                  _labels(job, TRAINER)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": meta.selector(TRAINER, job.metadata.name),
            "ports": [{"name": "rendezvous", "port": c.RENDEZVOUS_PORT, "protocol": "TCP"},
                      {"name": "metrics", "port": job.spec.trainer.metrics_port,
                       "protocol": "TCP"}],
        },
    }


def _config_volume(job: RLAIFJob) -> Manifest:
    return {"name": CONFIG_VOLUME, "configMap": {"name": config_name(job)}}


def _config_mount() -> Manifest:
    return {"name": CONFIG_VOLUME, "mountPath": c.CONFIG_DIR, "readOnly": True}


def _checkpoint_storage(spec: RLAIFJobSpec) -> tuple[list[Manifest], list[Manifest]]:
    """Volumes and mounts for /checkpoints: the spec's ``checkpoints`` volume, else an emptyDir
    (which does not survive a gang restart: mount a PVC named checkpoints to resume)."""
    volumes, mounts = [], []
    if not any(v.get("name") == c.CHECKPOINT_VOLUME for v in spec.volumes):
        volumes.append({"name": c.CHECKPOINT_VOLUME, "emptyDir": {}})
    if not any(m.get("mountPath") == c.CHECKPOINT_DIR for m in spec.volume_mounts):
        mounts.append({"name": c.CHECKPOINT_VOLUME, "mountPath": c.CHECKPOINT_DIR})
    return volumes, mounts


TRAIN_ARGS = ["train", "--config", f"{c.CONFIG_DIR}/{c.CONFIG_FILE}"]
"""``rlaif train`` picks its launcher from the config's nodes x processesPerNode (in-process,
the DeepSpeed launcher, or torchrun with a static rendezvous: see docs/trainer.md)."""


def rendezvous_env(job: RLAIFJob, attempt: int) -> list[Manifest]:
    """Where rank 0 is and which node this pod is (from the Indexed Job's completion index)."""
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    return [
        {"name": "MASTER_ADDR", "value": master_addr(job, attempt)},
        {"name": "MASTER_PORT", "value": str(c.RENDEZVOUS_PORT)},
        {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": index}}},
    ]


POD_FAILURE_POLICY: Manifest = {"rules": [
    # Failing the Job at once names the root-cause pod in its Failed condition; the operator
    # then fails the RLAIFJob (exit 2: invalid config) or restarts the gang (a disruption
    # without counting it against backoffLimit).
    {"action": "FailJob", "onExitCodes": {"containerName": TRAINER, "operator": "In",
                                          "values": [c.EXIT_INVALID_CONFIG]}},
    {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
]}


def build_pod_group(job: RLAIFJob) -> Manifest | None:
    """All-or-nothing placement of the trainer gang, when spec.runPolicy.gangScheduling asks."""
    kind = job.spec.run_policy.gang_scheduling
    if kind is None:
        return None
    return {"apiVersion": POD_GROUPS[kind][0], "kind": "PodGroup",
            "metadata": meta.metadata(trainer_service_name(job), job.metadata.namespace,
                                      _labels(job, TRAINER)),
            "spec": {"minMember": job.spec.trainer.nodes}}


def _gang_membership(job: RLAIFJob, template: Manifest) -> None:
    """Pods join the PodGroup (Volcano reads an annotation, coscheduling a label)."""
    kind = job.spec.run_policy.gang_scheduling
    if kind is None:
        return
    key = POD_GROUPS[kind][1]
    where = "annotations" if kind == "volcano" else "labels"
    template["metadata"].setdefault(where, {})[key] = trainer_service_name(job)
    if kind == "volcano":
        template["spec"].setdefault("schedulerName", "volcano")


def build_trainer_job(job: RLAIFJob, attempt: int, *, suspend: bool = False,
                      deadline_seconds: int | None = None,
                      wait_seconds: int = DEFAULT_WAIT_SECONDS) -> Manifest:
    """One gang attempt. backoffLimit 0: a failed pod fails the Job, the operator restarts the
    whole gang (and counts it in status.restarts against spec.runPolicy.backoffLimit)."""
    spec, name = job.spec, trainer_job_name(job, attempt)
    env = rendezvous_env(job, attempt)
    ckpt_volumes, ckpt_mounts = _checkpoint_storage(spec)
    mounts = [*spec.volume_mounts, _config_mount(), *ckpt_mounts,
              {"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    trainer = meta.container(TRAINER, spec.trainer.image, TRAIN_ARGS, env=env,
                             resources=spec.trainer.resources, mounts=mounts)
    trainer["ports"] = [{"name": "rendezvous", "containerPort": c.RENDEZVOUS_PORT},
                        {"name": "metrics", "containerPort": spec.trainer.metrics_port}]
    wait = meta.container("wait-for-rank-0", spec.trainer.image, ["-c", WAIT_FOR_MASTER],
                          env=[*env, {"name": WAIT_ENV, "value": str(wait_seconds)}],
                          command=["python"],
                          resources={"requests": {"cpu": "10m", "memory": "32Mi"},
                                     "limits": {"memory": "128Mi"}})
    lbls = {**_labels(job, TRAINER), ATTEMPT_LABEL: str(attempt)}
    pod_extra: Manifest = {"restartPolicy": "Never", "subdomain": trainer_service_name(job),
                           "initContainers": [wait],
                           "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS}
    if spec.run_policy.scheduler_name:
        pod_extra["schedulerName"] = spec.run_policy.scheduler_name
    volumes = [*spec.volumes, _config_volume(job), *ckpt_volumes,
               {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}}]
    job_meta = meta.metadata(name, job.metadata.namespace, dict(lbls))
    if queue := job.metadata.labels.get(meta.KUEUE_QUEUE_LABEL):
        job_meta["labels"][meta.KUEUE_QUEUE_LABEL] = queue
    template = {"metadata": {"labels": lbls},
                "spec": meta.pod_spec([trainer], volumes, **pod_extra)}
    _gang_membership(job, template)
    body: Manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.trainer.nodes,
            "parallelism": spec.trainer.nodes,
            "backoffLimit": 0,
            "podFailurePolicy": POD_FAILURE_POLICY,
            "suspend": suspend,
            "template": meta.apply_pod_template(template, spec.trainer.pod_template),
        },
    }
    if deadline_seconds is not None:
        body["spec"]["activeDeadlineSeconds"] = deadline_seconds
    return body


# --------------------------------------------------------------------------- rewards


def _read_only(volume: Manifest) -> Manifest:
    claim = volume.get("persistentVolumeClaim")
    return {**volume, "persistentVolumeClaim": {**claim, "readOnly": True}} if claim else volume


def reward_storage(job: RLAIFJob, model: str) -> tuple[list[Manifest], list[Manifest]]:
    """Only the job volumes a reward's model lives on, read-only: a reward pod never mounts
    the checkpoints or a writable data claim (which would pin it to a zone, or fail to attach
    a ReadWriteOnce claim the trainer holds)."""
    mounts = [{**m, "readOnly": True} for m in job.spec.volume_mounts
              if model == m.get("mountPath") or model.startswith(f"{m.get('mountPath')}/")]
    names = {m["name"] for m in mounts}
    return [_read_only(v) for v in job.spec.volumes if v.get("name") in names], mounts


def build_reward_servers(job: RLAIFJob) -> list[Manifest]:
    """One RewardServer per reward and evaluator without serverRef, labelled with the job
    (NetworkPolicy)."""
    servers = []
    for r in [*job.spec.rewards, *job.spec.evaluators()]:
        if r.server_ref is not None or r.kind is None or r.model is None:
            continue
        volumes, mounts = reward_storage(job, r.model)
        spec = RewardServerSpec(kind=r.kind, model=r.model, replicas=r.replicas,
                                autoscaling=r.autoscaling,
                                resources=r.resources, max_batch=r.max_batch,
                                max_wait_ms=r.max_wait_ms, label_schema=job.spec.label_schema,
                                judge=r.judge,
                                volumes=volumes, volume_mounts=mounts,
                                pod_template=r.pod_template)
        lbls = {**_labels(job, "reward-server"), "rlaif.dev/reward": r.name}
        if queue := job.metadata.labels.get(meta.KUEUE_QUEUE_LABEL):
            lbls[meta.KUEUE_QUEUE_LABEL] = queue  # admitted through the job's queue
        server = RewardServer.model_validate({
            "metadata": meta.metadata(reward_server_name(job, r.name), job.metadata.namespace,
                                      lbls),
            "spec": spec.model_dump(by_alias=True)})
        servers.append(server.model_dump(by_alias=True, exclude_none=True, mode="json"))
    return servers


Scraper = tuple[str, dict[str, str]]
"""(namespace, pod labels) of the Prometheus that scrapes reward servers' /metrics."""


def build_network_policy(job: RLAIFJob, scraper: Scraper | None = None
                         ) -> Manifest:
    """Only this job's trainer pods may reach the reward servers the job owns; and, when
    ``scraper`` is given, the Prometheus pods it names (their autoscaling signal is the
    servers' /metrics, served on the same and only port)."""
    port = [{"protocol": "TCP", "port": c.REWARD_PORT}]
    ingress: list[Manifest] = [{
        "from": [{"podSelector": {"matchLabels": {
            c.LABEL_JOB: job.metadata.name, c.LABEL_COMPONENT: TRAINER}}}],
        "ports": port,
    }]
    if scraper is not None:
        namespace, pod_labels = scraper
        ingress.append({"from": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": pod_labels}}], "ports": port})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta.metadata(network_policy_name(job), job.metadata.namespace,
                                  _labels(job, "reward-server")),
        "spec": {
            "podSelector": {"matchLabels": {c.LABEL_JOB: job.metadata.name,
                                            c.LABEL_COMPONENT: "reward-server"}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


# --------------------------------------------------------------------------- labelling


def build_labeling_job(job: RLAIFJob) -> Manifest | None:
    """``rlaif label`` writing spec.data.prompts; it resumes, so a complete file ends at once."""
    spec, lab = job.spec, job.spec.labeling
    if lab is None:
        return None
    if lab.input is None:
        raise ValueError("spec.labeling.input: required on a cluster (the texts to label)")
    args = ["label", "--in", lab.input, "--out", spec.data.prompts, "--endpoint", lab.endpoint,
            "--model", lab.model, "--concurrency", str(lab.concurrency),
            "--api-key-env", API_KEY_ENV, "--label-schema", f"{c.CONFIG_DIR}/{LABELS_FILE}"]
    env = []
    if lab.api_key_secret_ref is not None:
        env.append({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {
            "name": lab.api_key_secret_ref.name, "key": lab.api_key_secret_ref.key}}})
    box = meta.container(LABELER, spec.trainer.image, args, env=env,
                         mounts=[*spec.volume_mounts, _config_mount()],
                         resources={"requests": {"cpu": "500m", "memory": "512Mi"},
                                    "limits": {"memory": "2Gi"}})
    lbls = _labels(job, LABELER)
    pod_extra: Manifest = {"restartPolicy": "Never"}
    if spec.run_policy.scheduler_name:
        pod_extra["schedulerName"] = spec.run_policy.scheduler_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta.metadata(labeling_job_name(job), job.metadata.namespace, lbls),
        "spec": {
            # Retries are cheap: each run resumes where the last one stopped.
            "backoffLimit": 2,
            "template": meta.apply_pod_template(
                {"metadata": {"labels": lbls},
                 "spec": meta.pod_spec([box], [*spec.volumes, _config_volume(job)], **pod_extra)},
                lab.pod_template),
        },
    }


def build_children(job: RLAIFJob, attempt: int = 0) -> list[Manifest]:
    """Every child a running job has (for tests, docs and ``--dry-run`` style listings)."""
    children = [build_config_map(job), build_trainer_service(job),
                build_trainer_job(job, attempt), *build_reward_servers(job),
                build_network_policy(job)]
    if (group := build_pod_group(job)) is not None:
        children.append(group)
    if (labeling := build_labeling_job(job)) is not None:
        children.append(labeling)
    return children
