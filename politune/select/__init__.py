"""Select: each side's training posts from the annotated documents."""

from politune.stage import Stage, lazy, lazy_exports

STAGE = Stage(
    name="select", help="Choose each side's training posts from the annotations (thresholds, quantiles or source).",
    reads=("annotations",), writes=("selected",), section="select",
    build=lazy("politune.select.stage", "select_posts"), summary=lazy("politune.select.summary", "select_summary"),
    identity=lazy("politune.select.stage", "select_identity"), done_when="selected",
    figures=lazy("politune.select.summary", "select_figures"))

__all__ = ["STAGE", "SelectResult", "assign_sides", "select_posts"]
__getattr__ = lazy_exports(__name__, "politune.select.stage")  # SelectResult, assign_sides, select_posts: on first use
