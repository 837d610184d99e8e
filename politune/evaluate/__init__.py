"""Evaluate: where each model of the run stands on the political compass (see stage.py)."""

from politune.evaluate.stage import EvaluateResult, evaluate_models

__all__ = ["EvaluateResult", "evaluate_models"]
