"""How every command and job runs: resolve the config, make ready what its stages need (prepare.py), run it, and
turn a failure into one message on stderr and an exit code.

A failure in a Ray worker is told once, as `<stage> failed in a <worker> (pid, node): <Type>: <message>` and where
the worker's full log is; Ray's own copies of it stay in the log files (ray_runtime.py). Bad input (a missing file,
a model reference that does not load, an endpoint that does not answer) is `error: <stage>: <message>`. Anything
else is a bug, and its traceback is what a developer needs: it is raised as it is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import typer

from politune.config import ConfigError, RunConfig, resolve_config
from politune.failures import StageFailed
from politune.models.references import ModelReferenceError
from politune.prepare import Prepared
from politune.storage import StorageUnavailable

EXIT_FAILED, EXIT_BAD_CONFIG = 1, 2


def run_command(stages: Sequence[str] | Callable[[RunConfig], Sequence[str]], run: Callable[[RunConfig], object],
                config: str | None, preset: str | None, overrides: Sequence[str], *, verbose: bool = False,
                announce: bool = True, name: str | None = None) -> int:
    """Run `run(cfg)` for a command over `stages` (or a function of the config giving them); returns the exit code
    (0, 1 failed, 2 bad config). `announce` prints what preparing made (the tiny model built, the corpus
    generated); `name` names the command in messages (default: its stage)."""
    if verbose:
        os.environ["POLITUNE_VERBOSE"] = "1"  # read by init_ray in this process
    try:
        cfg = resolve_config(config, preset, list(overrides))
    except ConfigError as err:
        _error(str(err))
        return EXIT_BAD_CONFIG
    try:
        stages = stages(cfg) if callable(stages) else stages
    except ValueError as err:  # a stage choice (--from, --only) this run does not have
        _error(f"{name or 'run'}: {err}")
        return EXIT_BAD_CONFIG
    name = name or "/".join(stages) or "run"
    try:
        from politune.stages import prepare_stages

        prepared = prepare_stages(cfg, *stages)
        if announce:
            _announce(prepared)
        run(cfg)
    except Exception as err:
        message = failure_message(name, err)
        if message is None:
            raise
        _error(message)
        return EXIT_FAILED
    return 0


def stage_job(name: str, description: str) -> int:
    """jobs/<stage>.py: the job's arguments (the CLI's), then the stage and the stages that follow it, each result's
    summary printed; returns the exit code."""
    from politune.console import job_arguments, print_outputs
    from politune.stages import run_stage, stage

    s = stage(name)
    args = job_arguments(description, sides=s.sides)
    options = {"sides": args.side} if s.sides else {}
    return run_command((name,), lambda cfg: print_outputs(run_stage(s, cfg, **options)), args.config, args.preset,
                       args.set, verbose=args.verbose)


def failure_message(stage: str, err: BaseException) -> str | None:
    """The one message for a failure a user can act on; None for a bug (an exception of any other kind)."""
    if isinstance(err, StageFailed) and err.__cause__ is not None:
        stage, err = err.stage, err.__cause__
    if isinstance(err, (ModelReferenceError, StorageUnavailable)):  # ModelReferenceError: before Ray is imported
        return f"{stage}: {err}"
    if "ray" in sys.modules:
        from politune.failures import remote_failure, worker_log
        from politune.ray_runtime import logs_dir

        failure = remote_failure(err)
        if failure is not None:
            return failure.describe(stage, worker_log(failure, logs_dir()))
    from politune.engines.openai_http import EndpointError

    if isinstance(err, (OSError, ValueError, EndpointError, ImportError)):
        return f"{stage}: {err}"
    return None


def _announce(prepared: Prepared) -> None:
    if prepared.tiny_model_built:
        from politune.world.tiny import describe

        typer.echo(f"tiny model: built {prepared.tiny_model} ({describe(prepared.tiny_model)})")
    if prepared.corpus_generated and prepared.corpus:
        typer.echo(f"corpus:     generated {prepared.corpus['n']:,} posts in {prepared.corpus['out']}")


def _error(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
