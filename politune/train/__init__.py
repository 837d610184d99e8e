"""Train: one LoRA adapter a side with TRL (DPO or SFT) + PEFT under Ray Train, registered by name."""

from politune.train.stage import TrainResult, train_adapter, train_adapters

__all__ = ["TrainResult", "train_adapter", "train_adapters"]
