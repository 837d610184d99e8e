"""Synthesize: each side's preference pairs (prompt, chosen, rejected), cleaned and split."""

from politune.stage import Stage, lazy, lazy_exports

STAGE = Stage(
    name="synthesize",
    help="Each side's preference pairs (written from the selected posts, or imported), cleaned and split.",
    reads=("selected",), writes=("preferences",), section="synthesize",
    build=lazy("politune.synthesize.stage", "synthesize_preferences"),
    summary=lazy("politune.synthesize.summary", "synthesize_summary"),
    identity=lazy("politune.synthesize.stage", "synthesize_identity"), done_when="preferences",
    model_fields=lazy("politune.synthesize.stage", "synthesize_models"),
    figures=lazy("politune.synthesize.summary", "synthesize_figures"))

__all__ = ["STAGE", "SynthesizeResult", "synthesize_preferences"]
__getattr__ = lazy_exports(__name__, "politune.synthesize.stage")  # SynthesizeResult, synthesize_preferences
