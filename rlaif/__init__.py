"""rlaif-operator: RL from AI feedback for text-to-speech models, on Kubernetes or one machine."""

__version__ = "0.1.0"
