"""RLAIFJob and RewardServer: the only place the API schema is written.

CRDs (``rlaif crd``), validation (``rlaif validate``) and the trainer config are all
derived from these models. Defaults follow RLAIF-SPA where the paper states them.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator

from rlaif import constants as c
from rlaif.api.base import Model
from rlaif.api.labels import DIMENSIONS, Dimension, LabelSchema
from rlaif.api.podsecurity import restricted_violations

K8sObject = dict[str, Any]
"""A plain Kubernetes object (ResourceRequirements, Volume, ...), passed through untouched."""

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
RFC1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
SHARED_VOLUME_TYPES = ("persistentVolumeClaim", "csi", "ephemeral")
"""Volume types that can hold checkpoints every node of a gang sees (an RWX claim or CSI)."""

Algorithm = Literal["grpo", "dlpo"]
PolicyKind = Literal["prosody-lm", "codec-lm", "csm", "wavegrad2"]
RewardKind = Literal["asr", "judge", "mos", "speaker"]
AUTOREGRESSIVE_POLICIES = ("prosody-lm", "codec-lm", "csm")
MAX_STEPS = 10_000_000
"""Sane maxima refuse typos such as 10**30 steps before a trainer tries them."""
DIFFUSION_POLICIES = ("wavegrad2",)


# --------------------------------------------------------------------------- resources

QUANTITY = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
RESOURCE_NAME = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


def _quantity(value: object) -> object:
    if isinstance(value, str):
        ok = len(value) <= 64 and re.fullmatch(QUANTITY, value) is not None
    else:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and 0 <= value < 2**63)
    if not ok:
        raise ValueError(f"must be a quantity such as 500m, 4Gi or 2, got {value!r:.40}")
    return value


Quantity = Annotated[str | int | float, BeforeValidator(_quantity)]
ResourceList = dict[Annotated[str, Field(pattern=RESOURCE_NAME, max_length=253)], Quantity]


class _ResourceClaim(Model):
    name: str = Field(pattern=DNS_LABEL)
    request: str | None = None


class _ResourceRequirements(Model):
    limits: ResourceList = Field(default_factory=dict)
    requests: ResourceList = Field(default_factory=dict)
    claims: list[_ResourceClaim] = Field(default_factory=list)


def _resource_requirements(value: K8sObject) -> K8sObject:
    """A Kubernetes ResourceRequirements (requests/limits of quantities), kept a plain dict
    for the builders; anything else (a typo, a nested structure) is refused by name."""
    try:
        _ResourceRequirements.model_validate(value)
    except ValidationError as exc:
        raise ValueError("; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}".replace("Value error, ", "")
            .replace("Input should", "must").replace("String should", "must")
            for e in exc.errors()[:3])) from None
    return value


Resources = Annotated[K8sObject, AfterValidator(_resource_requirements)]


# --------------------------------------------------------------------------- pod overrides


class PodMetadataOverride(Model):
    """Labels and annotations added to the pods (a Volcano queue, a Multus network, ...)."""

    labels: dict[str, str] = Field(default_factory=dict, description="Pod labels; the "
                                   "operator's own labels (selectors) win on a clash.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Pod annotations.")


class ContainerOverride(Model):
    """Changes to one container of the built pod, matched by name."""

    name: str = Field(pattern=DNS_LABEL, description="trainer, server or labeler.")
    image: str | None = Field(None, description="Replaces the image.")
    env: list[K8sObject] = Field(default_factory=list, description="EnvVars, merged by name "
                                 "over the built ones (NCCL_*, HF_*).")
    env_from: list[K8sObject] = Field(default_factory=list, description="EnvFromSources, added.")
    volume_mounts: list[K8sObject] = Field(default_factory=list, description="VolumeMounts, "
                                           "added (same mountPath replaces).")
    security_context: K8sObject | None = Field(None, description="Merged over the built "
                                               "(restricted) SecurityContext.")


class PodSpecOverride(Model):
    """The PodSpec fields a pod override may set; everything else stays as built."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="Merged over the "
                                          "built nodeSelector.")
    tolerations: list[K8sObject] = Field(default_factory=list, description="Added tolerations "
                                         "(tainted GPU pools, spot nodes).")
    affinity: K8sObject | None = Field(None, description="Affinity (replaces).")
    topology_spread_constraints: list[K8sObject] = Field(default_factory=list,
                                                         description="Added constraints.")
    priority_class_name: str | None = Field(None, description="PriorityClass of the pods.")
    runtime_class_name: str | None = Field(None, description="RuntimeClass (e.g. nvidia).")
    scheduler_name: str | None = Field(None, description="Scheduler (overrides "
                                       "runPolicy.schedulerName for these pods).")
    service_account_name: str | None = Field(None, description="ServiceAccount of the pods.")
    image_pull_secrets: list[K8sObject] = Field(default_factory=list, description="Added "
                                                "LocalObjectReferences.")
    security_context: K8sObject | None = Field(None, description="Merged over the built "
                                               "(restricted) PodSecurityContext.")
    volumes: list[K8sObject] = Field(default_factory=list, description="Added volumes (same "
                                     "name replaces).")
    containers: list[ContainerOverride] = Field(default_factory=list, description="Per-"
                                                "container changes, matched by name.")


class PodTemplate(Model):
    """A partial PodTemplateSpec merged over the pod the operator builds."""

    metadata: PodMetadataOverride = Field(default_factory=PodMetadataOverride,
                                          description="Pod labels and annotations.")
    spec: PodSpecOverride = Field(default_factory=PodSpecOverride, description="Pod fields.")

    @model_validator(mode="after")
    def _restricted(self) -> PodTemplate:
        """Built pods pass the restricted Pod Security Standard; an override may not undo it."""
        errors = restricted_violations(self.spec.model_dump(by_alias=True, exclude_none=True),
                                       partial=True)
        if errors:
            raise ValueError("breaks the restricted Pod Security Standard: " + "; ".join(errors))
        return self

    def check_containers(self, allowed: str) -> PodTemplate:
        """Only the named container may be changed (the others are the operator's own)."""
        for box in self.spec.containers:
            if box.name != allowed:
                raise ValueError(f"spec.containers: no container named {box.name!r} in this pod "
                                 f"(the pod's container is {allowed!r})")
        return self


def _only(container: str) -> AfterValidator:
    return AfterValidator(lambda template: template.check_containers(container))


def _pod_template(container: str) -> Any:
    return Field(None, description=f"Partial pod template merged over the built pod (its "
                 f"container is {container}): nodeSelector, tolerations, env, ...")


# --------------------------------------------------------------------------- policy


class LoraSpec(Model):
    """LoRA adapters (peft). RLAIF-SPA: r 8, alpha 32, dropout 0.05 on attention and MLP."""

    r: int = Field(8, ge=1, le=4096, description="LoRA rank.")
    alpha: int = Field(32, ge=1, le=65536, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                 "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the linear modules that get adapters.",
    )


class PolicySpec(Model):
    """The speech policy being fine-tuned."""

    kind: PolicyKind = Field(description="Policy adapter: prosody-lm, codec-lm (Llasa-style), "
                                         "csm (Sesame CSM) (autoregressive) or wavegrad2 "
                                         "(diffusion).")
    model: str = Field(min_length=1, description="Model directory (absolute path on a mounted "
                                                 "volume) or a builtin: reference.")
    codec: str | None = Field(None, description="Codec model directory (codec-lm only).")
    finetune: Literal["lora", "full"] = Field(
        "lora", description="Train LoRA adapters (reference = adapters disabled) or all weights.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Compute dtype; auto = bfloat16 on GPUs that support it, else float32.")
    label_instruction: bool = Field(
        False, description="codec-lm: put RLAIF-SPA's instruction naming the four target labels "
                           "in the prompt (off: Llasa's prompt as published).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (less memory, more time).")


# --------------------------------------------------------------------------- data


class DataSpec(Model):
    """Training prompts."""

    prompts: str = Field(min_length=1, description='JSONL file, one {"text": ..., "labels": '
                                                   '{...}} per line.')
    ground_truth: str | None = Field(
        None, description="LJSpeech-layout folder (metadata.csv + wavs/) of text/audio pairs for "
                          "DLPO's diffusion-loss regulariser.")
    shuffle: bool = Field(True, description="Shuffle prompts each epoch (seeded).")


class SecretKeyRef(Model):
    """A key in a Secret of the job's namespace."""

    name: str = Field(min_length=1, description="Secret name.")
    key: str = Field(min_length=1, description="Key within the Secret.")


class LabelingSpec(Model):
    """Optional stage before training: an LLM labels each sentence (RLAIF-SPA's GPT-4o step)."""

    endpoint: str = Field(pattern=r"^https?://", description="OpenAI-compatible base URL.")
    model: str = Field(min_length=1, description="Chat model name, e.g. gpt-4o.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret holding the API key (never put keys in the spec).")
    input: str | None = Field(None, description="Texts to label (txt, jsonl or csv); the labelled "
                                                "prompts go to spec.data.prompts.")
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight.")
    pod_template: Annotated[PodTemplate, _only("labeler")] | None = _pod_template("labeler")


# --------------------------------------------------------------------------- rewards


class ServerRef(Model):
    """An existing RewardServer in the job's namespace."""

    name: str = Field(pattern=DNS_LABEL, description="RewardServer name.")


class JudgeSpec(Model):
    """How a judge reward asks its audio LLM: a local model directory (``backend: local``) or
    an OpenAI-compatible server such as vLLM (``backend: openai``; ``model`` is then the
    served model's name)."""

    dimensions: list[Dimension] = Field(
        default_factory=lambda: list(DIMENSIONS), min_length=1,
        description="Label dimensions the judge is asked about and scored on (the score is "
                    "the share of these it confirms); drop ones that cannot be heard, e.g. "
                    "structure.")
    backend: Literal["local", "openai"] = Field(
        "local", description="local: a transformers model directory in spec.model; openai: "
                             "POST {endpoint}/chat/completions with the audio as input_audio.")
    endpoint: str | None = Field(None, pattern=r"^https?://", description="OpenAI-compatible "
                                 "base URL, e.g. http://vllm:8000/v1 (backend: openai).")
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret holding the endpoint's API key, given to the server as "
                          f"${c.JUDGE_API_KEY_ENV} (never put keys in the spec).")
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight per batch.")
    timeout_seconds: float = Field(60.0, gt=0, le=3600, allow_inf_nan=False,
                                   description="Limit for one request.")
    retries: int = Field(3, ge=0, le=10, description="Retries of a request after a 429, a "
                         "5xx, a timeout or a connection error (exponential backoff; the "
                         "server's Retry-After wins).")
    json_schema: bool = Field(True, description="Constrain the answer to the label values "
                              "with response_format json_schema (vLLM, OpenAI); turn off for "
                              "a server that refuses it.")

    @model_validator(mode="after")
    def _backend_fields(self) -> JudgeSpec:
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError(f"dimensions: each dimension at most once, got {self.dimensions}")
        if self.backend == "openai" and self.endpoint is None:
            raise ValueError("endpoint: required for backend: openai (e.g. http://vllm:8000/v1)")
        if self.backend == "local" and (self.endpoint or self.api_key_secret_ref):
            raise ValueError("endpoint and apiKeySecretRef: only for backend: openai")
        return self

    @property
    def served(self) -> bool:
        """The model runs elsewhere: spec.model names it there, not a local directory."""
        return self.backend == "openai"

    def serve_args(self) -> list[str]:
        """``rlaif reward serve`` flags carrying these settings (the key comes by env var)."""
        return ["--judge", self.model_dump_json(by_alias=True, exclude_none=True,
                                                exclude={"api_key_secret_ref"})]

    def env(self) -> list[K8sObject]:
        """Container env for the API key: a secretKeyRef, never the key itself."""
        if self.api_key_secret_ref is None:
            return []
        ref = self.api_key_secret_ref
        return [{"name": c.JUDGE_API_KEY_ENV,
                 "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def _judge_field() -> Any:
    return Field(None, description="Judge settings (kind: judge only): dimensions scored, and "
                                   "a served model behind an OpenAI-compatible endpoint.")


def _judge_only(kind: str | None, judge: JudgeSpec | None) -> None:
    if judge is not None and kind != "judge":
        raise ValueError(f"judge: only for kind: judge (this reward is kind {kind})")


class AutoscalingMetric(Model):
    """A per-pod metric the HorizontalPodAutoscaler averages (a Pods metric, served to it by
    prometheus-adapter or KEDA's metrics server from the servers' /metrics)."""

    name: str = Field(c.AUTOSCALING_METRIC, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$",
                      max_length=200, description="Metric name, by default the reward "
                      "server's queue depth (items waiting for a batch).")
    target_average_value: str = Field(
        "8", pattern=QUANTITY, max_length=64, description="Average per pod the autoscaler "
        "keeps the metric at, as a quantity string: \"8\" queued items, \"500m\".")


class AutoscalingSpec(Model):
    """Replicas owned by an autoscaler: an HPA the operator creates on the RewardServer's scale
    subresource, or (external: true) one you bring, such as a KEDA ScaledObject. Either way
    the operator never resets the replicas the autoscaler sets."""

    external: bool = Field(False, description="Replicas belong to an autoscaler you create "
                           "(KEDA, a custom HPA); the operator creates none.")
    min_replicas: int | None = Field(None, ge=1, le=1000, description="Fewest pods (the "
                                     "operator's HPA; default 1).")
    max_replicas: int | None = Field(None, ge=1, le=1000, description="Most pods (the "
                                     "operator's HPA; required unless external).")
    metric: AutoscalingMetric | None = Field(None, description="What the operator's HPA "
                                             "scales on (default: queue depth, 8 per pod).")

    @model_validator(mode="after")
    def _complete(self) -> AutoscalingSpec:
        if self.external:
            if given := [f for f in ("min_replicas", "max_replicas", "metric")
                         if getattr(self, f) is not None]:
                names = ", ".join(type(self).model_fields[f].alias or f for f in given)
                raise ValueError(f"{names}: only for the operator's HPA, not with external: "
                                 f"true (configure your own autoscaler instead)")
            return self
        if self.max_replicas is None:
            raise ValueError("maxReplicas: required unless external is true")
        if self.max_replicas < self.hpa_min_replicas:
            raise ValueError(f"maxReplicas: must be at least minReplicas "
                             f"({self.hpa_min_replicas}), got {self.max_replicas}")
        return self

    @property
    def hpa_min_replicas(self) -> int:
        return 1 if self.min_replicas is None else self.min_replicas

    @property
    def hpa_metric(self) -> AutoscalingMetric:
        return self.metric or AutoscalingMetric()


def _autoscaling_field() -> Any:
    return Field(None, description="Let an autoscaler own the replicas: an HPA on the scale "
                                   "subresource, or an external one (KEDA).")


class RewardSpec(Model):
    """One reward: a server of its own (kind + model) or a shared one (serverRef)."""

    name: str = Field(pattern=DNS_LABEL, max_length=40, description="Unique name within the job.")
    kind: RewardKind | None = Field(None, description="asr, judge, mos or speaker.")
    model: str | None = Field(None, description="Model directory or builtin: reference.")
    server_ref: ServerRef | None = Field(None, description="Use a shared RewardServer instead.")
    weight: float = Field(gt=0, le=1000, allow_inf_nan=False,
                          description="Weight in the total reward (weighted sum).")
    replicas: int = Field(1, ge=0, le=1000, description="Server replicas (own servers only).")
    autoscaling: AutoscalingSpec | None = _autoscaling_field()
    resources: Resources = Field(default_factory=dict, description="Kubernetes "
                                 "ResourceRequirements, e.g. limits: {nvidia.com/gpu: 1}.")
    max_batch: int = Field(16, ge=1, le=1024, description="Micro-batch size of the server.")
    max_wait_ms: int = Field(10, ge=0, le=10000, description="Longest wait to fill a batch.")
    judge: JudgeSpec | None = _judge_field()
    pod_template: Annotated[PodTemplate, _only("server")] | None = _pod_template("server")

    @model_validator(mode="after")
    def _judge_settings(self) -> RewardSpec:
        _judge_only(self.kind, self.judge)
        return self

    @property
    def model_is_directory(self) -> bool:
        """spec.model is a local directory or builtin: reference (not a served model name)."""
        return self.judge is None or not self.judge.served


class EvaluatorSpec(RewardSpec):
    """A reward server that scores held-out samples only (never the training reward): a
    second opinion the policy cannot optimise against, e.g. PLCMOS for a DNSMOS-trained run."""

    weight: float = Field(0.0, ge=0, le=0, description="Always 0: an evaluator does not "
                          "count in the training reward.")


# --------------------------------------------------------------------------- evaluation


class DivergenceRule(Model):
    """Reward hacking as a trend: the training reward rises while a held-out metric falls."""

    metric: str = Field(min_length=1, description="Held-out metric: reward, or the name of a "
                        "reward or evaluator.")
    drop: float = Field(0.05, gt=0, le=1, allow_inf_nan=False, description="Fires when the "
                        "metric fell by more than this (score units) over the window.")
    evaluations: int = Field(3, ge=1, le=1000, description="The window: this many evaluation "
                             "intervals (K), during which the training reward rose.")


class GuardSpec(Model):
    """The reward-hacking guard, checked after every evaluation."""

    minimum: dict[str, Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="Floors: held-out metric -> lowest acceptable score.")
    divergence: list[DivergenceRule] = Field(default_factory=list, description="Training "
                                             "reward up, held-out metric down rules.")
    on_hacking: Literal["warn", "stop"] = Field("warn", description="warn: a RewardHacking "
                                                "condition and a warning; stop: also end the "
                                                "run (the best checkpoint stays exported).")


class EvaluationSpec(Model):
    """Held-out evaluation between training steps (rank 0 collects, all ranks generate)."""

    prompts: str = Field(min_length=1, description="Held-out prompts JSONL (same format as "
                         "spec.data.prompts, never trained on).")
    every_steps: int = Field(50, ge=1, le=MAX_STEPS, description="Steps between evaluations "
                             "(also one before training and one at the last step).")
    samples_per_prompt: int = Field(1, ge=1, le=64, description="Samples per held-out prompt.")
    sampling: Literal["greedy", "sampled"] = Field(
        "sampled", description="greedy: the most likely completion (one per prompt); sampled: "
                               "the training distribution, seeded the same at every evaluation.")
    seed: int = Field(0, ge=0, lt=2**31, description="Seed of the held-out samples (the same "
                      "at every evaluation and in rlaif eval, so comparisons are paired).")
    rewards: list[str] | None = Field(None, description="Training rewards that score the held-"
                                      "out samples (default: all; the held-out reward total "
                                      "needs all).")
    evaluators: list[EvaluatorSpec] = Field(
        default_factory=list, description="Evaluation-only reward servers.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    best_metric: str = Field("reward", description="Held-out metric that picks the best "
                             "checkpoint (exported to best/).")
    guard: GuardSpec = Field(default_factory=GuardSpec, description="Reward-hacking guard.")

    def scored_rewards(self, training: list[str]) -> list[str]:
        """Names of the training rewards that score held-out samples."""
        return list(training if self.rewards is None else self.rewards)

    def metric_names(self, training: list[str]) -> list[str]:
        """Every held-out metric a rule may name: reward (the weighted total, when every
        training reward is scored), each scored reward, each evaluator."""
        scored = self.scored_rewards(training)
        total = ["reward"] if set(training) <= set(scored) else []
        return total + scored + [e.name for e in self.evaluators]


# --------------------------------------------------------------------------- algorithms


class GRPOSpec(Model):
    """Group Relative Policy Optimisation (RLAIF-SPA defaults)."""

    group_size: int = Field(4, ge=2, le=1024, description="Samples per prompt (G).")
    batch_size: int = Field(1, ge=1, le=4096, description="Prompts per step on each rank.")
    learning_rate: float = Field(5e-6, gt=0, le=1, description="Adam learning rate.")
    kl_coef: float = Field(0.01, ge=0, le=1000, allow_inf_nan=False,
                           description="Weight of the k3 KL to the reference.")
    clip_epsilon: float = Field(0.2, gt=0, lt=1, description="PPO clip range (low side).")
    clip_epsilon_high: float | None = Field(None, gt=0, lt=1,
                                            description="Upper clip range; default clipEpsilon.")
    scale_rewards: bool = Field(True, description="Divide advantages by the group std "
                                                  "(false: Dr. GRPO, mean-centred only).")
    loss_normalization: Literal["sequence-mean", "token-sum"] = Field(
        "sequence-mean", description="Token mean per sequence then batch mean (RLAIF-SPA), or "
                                     "token sum over a constant (Dr. GRPO).")
    inner_iterations: int = Field(1, ge=1, le=16, description="Updates per batch of rollouts.")
    temperature: float = Field(1.0, gt=0, le=100, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(1024, ge=1, le=100_000, description="Longest generated sequence.")
    async_rollouts: int = Field(
        0, ge=0, le=1, description="Rollouts generated ahead of the update: 0 on-policy; 1 "
        "samples step t+1 on the weights before step t's update, while step t is scored and "
        "trained (one step off-policy: the clipped ratio uses the sampling log-probs as "
        "pi_old). More than 1 is not supported.")


class DLPOSpec(Model):
    """Diffusion Loss-guided Policy Optimisation for diffusion TTS, and its baselines."""

    objective: Literal["dlpo", "ddpo", "dpok", "rwr", "klinr"] = Field(
        "dlpo", description="dlpo (reward + diffusion loss) or a baseline of the paper.")
    group_size: int = Field(4, ge=2, le=1024, description="Denoising chains per text (G).")
    batch_size: int = Field(1, ge=1, le=4096, description="Texts per step on each rank.")
    denoising_steps: int = Field(50, ge=2, le=1000, description="Model evaluations per "
                                 "sampling chain (the last one is noise-free; 1000 = the "
                                 "paper's full chain).")
    learning_rate: float = Field(3e-5, gt=0, le=1, description="Adam learning rate (paper: 3e-5).")
    reward_scale: float = Field(5.0, gt=0, le=1000, allow_inf_nan=False,
                                description="Multiplies the advantage (paper: 5); rwr: "
                                            "1 / temperature of its exp(r) weights.")
    diffusion_loss_coef: float = Field(1.0, ge=0, le=1000, allow_inf_nan=False,
                                       description="Weight of the diffusion loss (with "
                                                   "diffusionLossTarget: its floor).")
    diffusion_loss_target: float | None = Field(
        None, gt=1, le=100, allow_inf_nan=False,
        description="dlpo only, opt-in: bound on the diffusion-loss probe as a multiple of "
                    "its step-1 value, held by an adaptive weight: past the midway point it "
                    "doubles and the step drops its reward term; under a quarter of the way "
                    "it halves, down to diffusionLossCoef.")
    kl_coef: float = Field(0.01, ge=0, le=1000, allow_inf_nan=False,
                           description="Weight of the KL to the reference, per denoising "
                                       "step and audio sample (dpok, klinr).")
    clip_epsilon: float = Field(1e-4, gt=0, lt=1, description="PPO clip of the per-sample "
                                "ratio in inner iterations after the first (DDPO: 1e-4).")
    inner_iterations: int = Field(1, ge=1, le=16, description="Updates per batch of rollouts.")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of weights; 0 disables "
                                                          "(paper: 0.999).")

    @model_validator(mode="after")
    def _target_needs_the_regulariser(self) -> DLPOSpec:
        if self.diffusion_loss_target is None:
            return self
        if self.objective != "dlpo":
            raise ValueError(f"diffusionLossTarget: only objective dlpo has the diffusion-loss "
                             f"regulariser it adapts, not {self.objective}")
        if self.diffusion_loss_coef == 0:
            raise ValueError("diffusionLossTarget: needs diffusionLossCoef > 0 (the adaptive "
                             "weight starts there and never goes below it)")
        return self


# --------------------------------------------------------------------------- trainer


class DeepSpeedSpec(Model):
    """DeepSpeed engine settings."""

    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage.")
    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory.")
    gradient_clipping: float = Field(1.0, ge=0, le=1e6, allow_inf_nan=False,
                                     description="Gradient-norm clip; 0 disables.")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Linear learning-rate warm-up.")
    lr_decay_every: int = Field(100, ge=1, le=MAX_STEPS,
                                description="StepLR period (RLAIF-SPA: 100).")
    lr_decay_gamma: float = Field(0.95, gt=0, le=1, description="StepLR factor (RLAIF-SPA: 0.95).")


class TrainerSpec(Model):
    """Trainer pods: one per node, each running processesPerNode ranks."""

    image: str = Field(c.TRAINER_IMAGE, description="Trainer container image.")
    nodes: int = Field(1, ge=1, le=1024, description="Trainer pods.")
    processes_per_node: int = Field(1, ge=1, le=64, description="Ranks per pod (GPUs per pod).")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="Engine.")
    resources: Resources = Field(default_factory=dict, description="ResourceRequirements.")
    metrics_port: int = Field(c.METRICS_PORT, ge=1, le=65535, description="Prometheus port.")
    pod_template: Annotated[PodTemplate, _only("trainer")] | None = _pod_template("trainer")


class CheckpointSpec(Model):
    """Checkpoints, written atomically under /checkpoints (mount a volume named checkpoints)."""

    every_steps: int = Field(50, ge=1, le=MAX_STEPS, description="Steps between checkpoints.")
    keep: int = Field(3, ge=1, le=1000, description="Newest checkpoints kept.")
    save_merged: bool = Field(False, description="At the end, also save the LoRA adapters "
                                                 "merged into the base model (output/merged), "
                                                 "loadable without peft.")


class RunPolicy(Model):
    """Restarts, deadlines and scheduling."""

    backoff_limit: int = Field(3, ge=0, description="Gang restarts before the job fails.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Wall-clock limit.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0,
                                                   description="Delete the job this long after "
                                                               "it finishes.")
    suspend: bool = Field(False, description="Stop trainers after a checkpoint; scale rewards "
                                             "to zero.")
    scheduler_name: str | None = Field(None, description="Pod scheduler (e.g. volcano).")
    gang_scheduling: Literal["volcano", "coscheduling"] | None = Field(
        None, description="Create a PodGroup (minMember = trainer.nodes) for Volcano or the "
                          "scheduler-plugins coscheduling plugin, so the gang is placed whole "
                          "or not at all; volcano also sets schedulerName volcano if unset.")
    rewards_ready_timeout_seconds: int = Field(900, ge=1, description="Fail if reward servers "
                                                                      "are not ready by then.")
    keep_reward_servers: bool = Field(False, description="Keep the job's own reward servers "
                                      "running after it finishes (default: scale them to 0 "
                                      "replicas, freeing their GPUs).")


class RLAIFJobSpec(Model):
    """What to train, with which rewards, and how."""

    algorithm: Algorithm = Field("grpo", description="grpo (autoregressive) or dlpo (diffusion).")
    policy: PolicySpec = Field(description="The speech policy.")
    data: DataSpec = Field(description="Training data.")
    labeling: LabelingSpec | None = Field(None, description="LLM labelling stage.")
    label_schema: LabelSchema = Field(default_factory=LabelSchema,
                                      description="Prosody label values (RLAIF-SPA's lists).")
    rewards: list[RewardSpec] = Field(
        min_length=1, description="Rewards and their weights.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    grpo: GRPOSpec = Field(default_factory=GRPOSpec, description="GRPO settings.")
    dlpo: DLPOSpec = Field(default_factory=DLPOSpec, description="DLPO settings.")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="Trainer pods.")
    steps: int = Field(1000, ge=1, le=MAX_STEPS, description="Training steps.")
    seed: int = Field(0, ge=0, lt=2**63, description="Random seed (offset per rank).")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints.")
    volumes: list[K8sObject] = Field(default_factory=list, description="Pod volumes.")
    volume_mounts: list[K8sObject] = Field(default_factory=list,
                                           description="Mounts for trainer and reward pods.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Run policy.")
    evaluation: EvaluationSpec | None = Field(None, description="Held-out evaluation and the "
                                              "reward-hacking guard.")

    def evaluators(self) -> list[EvaluatorSpec]:
        """spec.evaluation.evaluators (none without spec.evaluation)."""
        return list(self.evaluation.evaluators) if self.evaluation is not None else []


# --------------------------------------------------------------------------- status


class Condition(Model):
    """A Kubernetes-style condition."""

    type: str = Field(description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field("", description="Machine-readable reason (CamelCase).")
    message: str = Field("", description="Human-readable message.")
    last_transition_time: str | None = Field(None, description="RFC 3339 time.")


class RewardStatus(Model):
    """One reward's server as seen by the job."""

    name: str
    endpoint: str | None = None
    replicas: int = 0
    ready_replicas: int = 0


class CheckpointStatus(Model):
    """The newest complete checkpoint."""

    step: int
    path: str
    time: str | None = None


class EvaluationStatus(Model):
    """The latest held-out evaluation, from rank 0's gauges."""

    step: int | None = Field(None, description="Last step evaluated.")
    score: float | None = Field(None, description="bestMetric's latest value (the Held-Out "
                                "column).")
    metrics: dict[str, float] = Field(default_factory=dict, description="Latest value of each "
                                      "held-out metric.")
    best: dict[str, float] = Field(default_factory=dict, description="Best value so far of "
                                   "each held-out metric.")
    best_step: int | None = Field(None, description="Step of the best checkpoint by "
                                  "bestMetric (exported to best/).")


Phase = Literal["Pending", "Labeling", "Queued", "Starting", "Running", "Succeeded", "Failed",
                "Suspended"]


class RLAIFJobStatus(Model):
    """Observed state, written by the operator."""

    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    step: int | None = None
    total_steps: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    restarts: int | None = None
    disruptions: int | None = Field(None, description="Gang restarts after a disruption "
                                    "(preemption, eviction, node drain); not counted against "
                                    "backoffLimit.")
    attempt: int | None = Field(None, description="The current trainer gang attempt.")
    failed_attempt: int | None = Field(None, description="The last attempt whose failure was "
                                       "counted (so a failure is counted once).")
    restart_after: str | None = Field(None, description="No new gang before this time "
                                      "(exponential backoff).")
    metrics: dict[str, float] = Field(default_factory=dict,
                                      description="Latest step metrics (reward, kl, loss, ...).")
    rewards: list[RewardStatus] = Field(default_factory=list)
    last_checkpoint: CheckpointStatus | None = None
    evaluation: EvaluationStatus | None = None


class RewardServerSpec(Model):
    """A scalable reward-model server (Deployment + Service)."""

    kind: RewardKind = Field(description="asr, judge, mos or speaker.")
    model: str = Field(min_length=1, description="Model directory or builtin: reference.")
    replicas: int = Field(1, ge=0, le=1000, description="Server pods.")
    autoscaling: AutoscalingSpec | None = _autoscaling_field()
    resources: Resources = Field(default_factory=dict, description="ResourceRequirements.")
    max_batch: int = Field(16, ge=1, le=1024, description="Micro-batch size.")
    max_wait_ms: int = Field(10, ge=0, le=10000, description="Longest wait to fill a batch.")
    image: str = Field(c.REWARD_IMAGE, description="Reward server image.")
    label_schema: LabelSchema = Field(default_factory=LabelSchema,
                                      description="Label values the judge accepts.")
    judge: JudgeSpec | None = _judge_field()
    volumes: list[K8sObject] = Field(default_factory=list, description="Pod volumes.")
    volume_mounts: list[K8sObject] = Field(default_factory=list, description="Mounts.")
    pod_template: Annotated[PodTemplate, _only("server")] | None = _pod_template("server")

    @model_validator(mode="after")
    def _judge_settings(self) -> RewardServerSpec:
        _judge_only(self.kind, self.judge)
        return self

    @property
    def model_is_directory(self) -> bool:
        """spec.model is a local directory or builtin: reference (not a served model name)."""
        return self.judge is None or not self.judge.served


class RewardServerStatus(Model):
    """Observed state of a RewardServer."""

    replicas: int | None = None
    ready_replicas: int | None = None
    selector: str | None = None
    endpoint: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


# --------------------------------------------------------------------------- objects


class ObjectMeta(Model):
    """The metadata fields a manifest may carry (server-set fields pass through)."""

    model_config = Model.model_config | {"extra": "allow"}

    name: str = Field(pattern=RFC1035_LABEL, max_length=63, description="An RFC 1035 label "
                      "(lower-case letter first, no dots): the operator names Services after it.")
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class RLAIFJob(Model):
    """A reinforcement-learning-from-AI-feedback run for a TTS policy."""

    api_version: Literal["rlaif.dev/v1alpha1"] = "rlaif.dev/v1alpha1"
    kind: Literal["RLAIFJob"] = "RLAIFJob"
    metadata: ObjectMeta
    spec: RLAIFJobSpec
    status: RLAIFJobStatus | None = None

    @model_validator(mode="after")
    def _shared_checkpoints(self) -> RLAIFJob:
        """Every node of a gang resumes from the same newest checkpoint, so it must be on a
        volume they all mount; an emptyDir per pod would fail at the first resume."""
        if self.spec.trainer.nodes > 1 and not any(
                v.get("name") == c.CHECKPOINT_VOLUME and set(v) & set(SHARED_VOLUME_TYPES)
                for v in self.spec.volumes):
            raise ValueError(f"spec.volumes: trainer.nodes is {self.spec.trainer.nodes}, so a "
                             f"volume named {c.CHECKPOINT_VOLUME!r} shared by every node is "
                             f"required (a ReadWriteMany persistentVolumeClaim or a csi volume)")
        return self


class RewardServer(Model):
    """A reward-model server that jobs share or own."""

    api_version: Literal["rlaif.dev/v1alpha1"] = "rlaif.dev/v1alpha1"
    kind: Literal["RewardServer"] = "RewardServer"
    metadata: ObjectMeta
    spec: RewardServerSpec
    status: RewardServerStatus | None = None


KINDS: dict[str, type[RLAIFJob] | type[RewardServer]] = {
    c.JOB_KIND: RLAIFJob,
    c.SERVER_KIND: RewardServer,
}
