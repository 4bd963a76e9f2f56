"""grpo-vla: GRPO fine-tuning of flow-matching VLA policies (SmolVLA) on LIBERO."""

__version__ = "0.1.0"
