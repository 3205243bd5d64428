"""Offline knowledge distillation from LLM teachers: cache top-k log-probs, stream them into a student."""

__version__ = "0.1.0"
