"""Evaluate: where each model of the run stands on the political compass (see stage.py)."""

from politune.stage import Stage, lazy, lazy_exports

STAGE = Stage(
    name="evaluate", help="Place every model of the run on the compass (propositions, probes, judge) through its "
    "Serve app or any OpenAI-compatible endpoint; writes eval/answers.parquet and the report.",
    reads=("adapters",), writes=("eval",), section="evaluate",
    build=lazy("politune.evaluate.stage", "evaluate_models"),
    summary=lazy("politune.evaluate.summary", "evaluate_summary"),
    identity=lazy("politune.evaluate.stage", "evaluate_identity"), done_when="eval",
    model_fields=lazy("politune.evaluate.stage", "evaluate_models_loaded"),
    figures=lazy("politune.evaluate.summary", "evaluate_figures"), serves=True, then=("report",))

__all__ = ["STAGE", "EvaluateResult", "evaluate_models"]
__getattr__ = lazy_exports(__name__, "politune.evaluate.stage")  # EvaluateResult, evaluate_models: on first use
