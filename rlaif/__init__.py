"""rlaif-operator: RL from AI feedback for text-to-speech models, on Kubernetes or one machine."""

from rlaif import numba_cache

__version__ = "0.1.0"

# Before anything imports numba (librosa does): every process of ours shares one safe cache.
numba_cache.configure()
