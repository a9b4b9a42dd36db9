"""Names shared by the operator, trainer, reward servers and tests: one place to change them."""

from rlaif import __version__

GROUP = "rlaif.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "rlaif"

JOB_KIND = "RLAIFJob"
JOB_PLURAL = "rlaifjobs"
JOB_SINGULAR = "rlaifjob"
JOB_SHORT = "rj"

SERVER_KIND = "RewardServer"
SERVER_PLURAL = "rewardservers"
SERVER_SINGULAR = "rewardserver"
SERVER_SHORT = "rs"

# Labels put on every child object.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = f"{GROUP}/job"
LABEL_SERVER = f"{GROUP}/rewardserver"
PART_OF = "rlaif-operator"

# Ports.
REWARD_PORT = 8080
METRICS_PORT = 9090
RENDEZVOUS_PORT = 29500

# Paths inside trainer and reward pods.
CONFIG_DIR = "/etc/rlaif"
CONFIG_FILE = "trainer.yaml"
CHECKPOINT_DIR = "/checkpoints"
CHECKPOINT_VOLUME = "checkpoints"
CHECKPOINT_STEP_DIR = "step-{step:08d}"
"""A complete checkpoint's folder under CHECKPOINT_DIR (status.lastCheckpoint.path)."""
SCRATCH_DIR = "/tmp"

# Container images (tags follow the package version).
IMAGE_REPOSITORY = "ghcr.io/rlaif-operator/rlaif"
TRAINER_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}-trainer"
REWARD_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}-reward"

# Audio on the wire between trainer and reward servers.
SAMPLE_RATE = 16000

# Reward server request limits (server defaults; the client splits batches to fit).
REWARD_MAX_ITEMS = 64
REWARD_MAX_BODY_BYTES = 32 * 1024 * 1024
REWARD_MAX_AUDIO_SECONDS = 60.0
REWARD_MAX_REQUEST_AUDIO_SECONDS = 960.0
# Server-wide backpressure: audio admitted but not yet scored, and request bodies being read
# or parsed at once; past either a request gets 503 with Retry-After.
REWARD_MAX_QUEUED_AUDIO_SECONDS = 1920.0
REWARD_MAX_READING_BYTES = 4 * REWARD_MAX_BODY_BYTES

# The served judge's API key reaches the reward server in this variable (from a Secret).
JUDGE_API_KEY_ENV = "RLAIF_JUDGE_API_KEY"

# Model references that need no mounted volume (see rlaif/modelref.py).
BUILTIN_SCHEME = "builtin:"

# Condition types of RLAIFJob status. "Ready" summarises the job: its reason and message
# say what the job is doing or why it stopped (shown by `kubectl get rj -o wide`).
COND_READY = "Ready"
COND_REWARDS_READY = "RewardsReady"
COND_LABELED = "Labeled"
COND_RUNNING = "Running"
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
COND_SUSPENDED = "Suspended"
COND_REWARD_HACKING = "RewardHacking"
"""A held-out metric broke a spec.evaluation.guard rule (figures in the message)."""

# Trainer exit code for a configuration it refuses: restarting the gang cannot help, so the
# operator fails the job at once (its Job's podFailurePolicy fails the Job on it too).
EXIT_INVALID_CONFIG = 2
AUTOSCALING_METRIC = "rlaif_reward_queue_depth"
"""The reward servers' scaling signal: items waiting for a batch, per pod."""
