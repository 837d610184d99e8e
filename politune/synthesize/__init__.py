"""Synthesize: each side's preference pairs (prompt, chosen, rejected), cleaned and split."""

from politune.synthesize.stage import SynthesizeResult, synthesize_preferences

__all__ = ["SynthesizeResult", "synthesize_preferences"]
