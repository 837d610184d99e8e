"""Serve: the base model and every registered adapter behind one OpenAI-compatible Ray Serve endpoint."""

from politune.stage import Stage, lazy

# `politune serve` runs it (until Ctrl-C on a local Ray); evaluate is handed serve.app.serving to start it for a while
STAGE = Stage(
    name="serve",
    help="Serve the base model and every registered adapter behind an OpenAI-compatible endpoint (Ray Serve).",
    reads=("adapters",), writes=(), section="serve", build=lazy("politune.serve.app", "start_serving"),
    summary=lazy("politune.serve.app", "serve_summary"), model_fields=lazy("politune.serve.app", "serve_models"))
