"""Select: each side's training posts from the annotated documents."""

from politune.select.stage import SelectResult, assign_sides, select_posts

__all__ = ["SelectResult", "assign_sides", "select_posts"]
