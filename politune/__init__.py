"""PoliTune: measure and steer the political leaning of LLMs."""

__version__ = "0.1.0"
