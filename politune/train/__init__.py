"""Train: one LoRA adapter a side with TRL (DPO or SFT) + PEFT under Ray Train, registered by name."""

from politune.stage import Stage, lazy, lazy_exports

STAGE = Stage(
    name="train", help="Train one LoRA adapter a side and one a mixture (DPO or SFT) under Ray Train and register "
    "it; resumes a killed run.",
    reads=("preferences",), writes=("adapters",), section="train",
    build=lazy("politune.train.stage", "train_adapters"), summary=lazy("politune.train.summary", "train_summary"),
    identity=lazy("politune.train.stage", "train_identity"), done_when="adapter:",
    model_fields=lazy("politune.train.stage", "train_models"),
    figures=lazy("politune.train.summary", "train_figures"), sides=True)

__all__ = ["STAGE", "TrainResult", "train_adapter", "train_adapters"]
__getattr__ = lazy_exports(__name__, "politune.train.stage")  # TrainResult, train_adapter(s): on first use
