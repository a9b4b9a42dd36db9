"""RLAIFJob and RewardServer: the only place the API schema is written.

CRDs (``rlaif crd``), validation (``rlaif validate``) and the trainer config are all
derived from these models. Defaults follow RLAIF-SPA where the paper states them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rlaif import constants as c
from rlaif.api.base import Model
from rlaif.api.labels import LabelSchema

K8sObject = dict[str, Any]
"""A plain Kubernetes object (ResourceRequirements, Volume, ...), passed through untouched."""

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Algorithm = Literal["grpo", "dlpo"]
PolicyKind = Literal["prosody-lm", "codec-lm", "wavegrad2"]
RewardKind = Literal["asr", "judge", "mos", "speaker"]
AUTOREGRESSIVE_POLICIES = ("prosody-lm", "codec-lm")
DIFFUSION_POLICIES = ("wavegrad2",)


# --------------------------------------------------------------------------- policy


class LoraSpec(Model):
    """LoRA adapters (peft). RLAIF-SPA: r 8, alpha 32, dropout 0.05 on attention and MLP."""

    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                 "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the linear modules that get adapters.",
    )


class PolicySpec(Model):
    """The speech policy being fine-tuned."""

    kind: PolicyKind = Field(description="Policy adapter: prosody-lm, codec-lm (autoregressive) "
                                         "or wavegrad2 (diffusion).")
    model: str = Field(min_length=1, description="Model directory (absolute path on a mounted "
                                                 "volume) or a builtin: reference.")
    codec: str | None = Field(None, description="Codec model directory (codec-lm only).")
    finetune: Literal["lora", "full"] = Field(
        "lora", description="Train LoRA adapters (reference = adapters disabled) or all weights.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Compute dtype; auto = bfloat16 on GPUs that support it, else float32.")


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


# --------------------------------------------------------------------------- rewards


class ServerRef(Model):
    """An existing RewardServer in the job's namespace."""

    name: str = Field(pattern=DNS_LABEL, description="RewardServer name.")


class RewardSpec(Model):
    """One reward: a server of its own (kind + model) or a shared one (serverRef)."""

    name: str = Field(pattern=DNS_LABEL, max_length=40, description="Unique name within the job.")
    kind: RewardKind | None = Field(None, description="asr, judge, mos or speaker.")
    model: str | None = Field(None, description="Model directory or builtin: reference.")
    server_ref: ServerRef | None = Field(None, description="Use a shared RewardServer instead.")
    weight: float = Field(gt=0, description="Weight in the total reward (weighted sum).")
    replicas: int = Field(1, ge=0, description="Server replicas (own servers only).")
    resources: K8sObject = Field(default_factory=dict, description="Kubernetes "
                                 "ResourceRequirements, e.g. limits: {nvidia.com/gpu: 1}.")
    max_batch: int = Field(16, ge=1, le=1024, description="Micro-batch size of the server.")
    max_wait_ms: int = Field(10, ge=0, le=10000, description="Longest wait to fill a batch.")


# --------------------------------------------------------------------------- algorithms


class GRPOSpec(Model):
    """Group Relative Policy Optimisation (RLAIF-SPA defaults)."""

    group_size: int = Field(4, ge=2, description="Samples per prompt (G).")
    batch_size: int = Field(1, ge=1, description="Prompts per step on each rank.")
    learning_rate: float = Field(5e-6, gt=0, description="Adam learning rate.")
    kl_coef: float = Field(0.01, ge=0, description="Weight of the k3 KL to the reference.")
    clip_epsilon: float = Field(0.2, gt=0, lt=1, description="PPO clip range (low side).")
    clip_epsilon_high: float | None = Field(None, gt=0, lt=1,
                                            description="Upper clip range; default clipEpsilon.")
    scale_rewards: bool = Field(True, description="Divide advantages by the group std "
                                                  "(false: Dr. GRPO, mean-centred only).")
    loss_normalization: Literal["sequence-mean", "token-sum"] = Field(
        "sequence-mean", description="Token mean per sequence then batch mean (RLAIF-SPA), or "
                                     "token sum over a constant (Dr. GRPO).")
    inner_iterations: int = Field(1, ge=1, le=16, description="Updates per batch of rollouts.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(1024, ge=1, description="Longest generated sequence.")


class DLPOSpec(Model):
    """Diffusion Loss-guided Policy Optimisation for diffusion TTS, and its baselines."""

    objective: Literal["dlpo", "ddpo", "dpok", "rwr", "klinr"] = Field(
        "dlpo", description="dlpo (reward + diffusion loss) or a baseline of the paper.")
    group_size: int = Field(4, ge=2, description="Denoising chains per text (G).")
    batch_size: int = Field(1, ge=1, description="Texts per step on each rank.")
    denoising_steps: int = Field(50, ge=2, le=1000, description="Model evaluations per "
                                 "sampling chain (the last one is noise-free; 1000 = the "
                                 "paper's full chain).")
    learning_rate: float = Field(3e-5, gt=0, description="Adam learning rate (paper: 3e-5).")
    reward_scale: float = Field(5.0, gt=0, description="Multiplies the reward (paper: 5).")
    diffusion_loss_coef: float = Field(1.0, ge=0, description="Weight of the diffusion loss.")
    kl_coef: float = Field(0.01, ge=0, description="Reference penalty weight (dpok, klinr).")
    clip_epsilon: float = Field(0.2, gt=0, lt=1, description="PPO clip for reused rollouts.")
    inner_iterations: int = Field(1, ge=1, le=16, description="Updates per batch of rollouts.")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of weights; 0 disables "
                                                          "(paper: 0.999).")


# --------------------------------------------------------------------------- trainer


class DeepSpeedSpec(Model):
    """DeepSpeed engine settings."""

    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage.")
    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory.")
    gradient_clipping: float = Field(1.0, ge=0, description="Gradient-norm clip; 0 disables.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up.")
    lr_decay_every: int = Field(100, ge=1, description="StepLR period (RLAIF-SPA: 100).")
    lr_decay_gamma: float = Field(0.95, gt=0, le=1, description="StepLR factor (RLAIF-SPA: 0.95).")


class TrainerSpec(Model):
    """Trainer pods: one per node, each running processesPerNode ranks."""

    image: str = Field(c.TRAINER_IMAGE, description="Trainer container image.")
    nodes: int = Field(1, ge=1, description="Trainer pods.")
    processes_per_node: int = Field(1, ge=1, description="Ranks per pod (GPUs per pod).")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="Engine.")
    resources: K8sObject = Field(default_factory=dict, description="ResourceRequirements.")
    metrics_port: int = Field(c.METRICS_PORT, ge=1, le=65535, description="Prometheus port.")


class CheckpointSpec(Model):
    """Checkpoints, written atomically under /checkpoints (mount a volume named checkpoints)."""

    every_steps: int = Field(50, ge=1, description="Steps between checkpoints.")
    keep: int = Field(3, ge=1, description="Newest checkpoints kept.")
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
    rewards_ready_timeout_seconds: int = Field(900, ge=1, description="Fail if reward servers "
                                                                      "are not ready by then.")


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
    steps: int = Field(1000, ge=1, description="Training steps.")
    seed: int = Field(0, ge=0, description="Random seed (offset per rank).")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints.")
    volumes: list[K8sObject] = Field(default_factory=list, description="Pod volumes.")
    volume_mounts: list[K8sObject] = Field(default_factory=list,
                                           description="Mounts for trainer and reward pods.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Run policy.")


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


Phase = Literal["Pending", "Labeling", "Starting", "Running", "Succeeded", "Failed", "Suspended"]


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
    metrics: dict[str, float] = Field(default_factory=dict,
                                      description="Latest step metrics (reward, kl, loss, ...).")
    rewards: list[RewardStatus] = Field(default_factory=list)
    last_checkpoint: CheckpointStatus | None = None


class RewardServerSpec(Model):
    """A scalable reward-model server (Deployment + Service)."""

    kind: RewardKind = Field(description="asr, judge, mos or speaker.")
    model: str = Field(min_length=1, description="Model directory or builtin: reference.")
    replicas: int = Field(1, ge=0, description="Server pods.")
    resources: K8sObject = Field(default_factory=dict, description="ResourceRequirements.")
    max_batch: int = Field(16, ge=1, le=1024, description="Micro-batch size.")
    max_wait_ms: int = Field(10, ge=0, le=10000, description="Longest wait to fill a batch.")
    image: str = Field(c.REWARD_IMAGE, description="Reward server image.")
    label_schema: LabelSchema = Field(default_factory=LabelSchema,
                                      description="Label values the judge accepts.")
    volumes: list[K8sObject] = Field(default_factory=list, description="Pod volumes.")
    volume_mounts: list[K8sObject] = Field(default_factory=list, description="Mounts.")


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

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63)
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
