"""The capability pass: what steering costs in general capability, measured with EleutherAI's lm-evaluation-harness
through the same OpenAI-compatible endpoint that answers the compass.

Each model of the run (the base, every adapter, scaled copies and checkpoints when evaluate asks them) is the
harness's `local-completions` model, which sends token-id prompts to `/v1/completions` and reads the echoed
log-probabilities. The tasks are the harness's own (their data from the Hugging Face hub or cache) or the project's
offline ones in `capability_tasks/` (the harness's YAML format: `politune_sides`). Every task is loaded before any
model is asked; one that cannot load is an error naming it and why. The scores, with the harness's version and each
task's, go to `eval/capability.json`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

from politune.config import CapabilityConfig

TASKS_DIR = Path(__file__).parent / "capability_tasks"
FILE = "capability.json"


def _harness() -> Any:
    try:
        import lm_eval
        import lm_eval.api.task
        from tqdm import tqdm

        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notices are not the console's
        lm_eval.api.task.tqdm = functools.partial(tqdm, disable=True)  # nor its bar a task, a model
    except ImportError as err:
        raise ImportError("evaluate.capability needs lm-evaluation-harness: pip install 'politune[capability]' "
                          "(make install includes it)") from err
    return lm_eval


def load_tasks(names: list[str]) -> dict[str, Any]:
    """The harness's task objects by name (the project's own tasks found too); ValueError naming each task that
    cannot be loaded, and why, before any model is asked."""
    _harness()
    from lm_eval.tasks import get_task_dict

    manager = _manager(tuple(names))
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ValueError(f"evaluate.capability.tasks: {', '.join(unknown)} not known to lm-evaluation-harness "
                         f"{_harness().__version__} (nor among the project's own: politune_sides)")
    tasks = {}
    for name in names:
        try:
            tasks.update(get_task_dict([name], manager))
        except Exception as err:  # its data could not be fetched or read
            raise ValueError(f"evaluate.capability.tasks: {name} could not be loaded: {type(err).__name__}: {err}"
                             ) from None
    return tasks


def requests_per_model(names: list[str], limit: int | None) -> int:
    """What one model is asked: a loglikelihood request per document and choice (the plan's count)."""
    total = 0
    for task in _leaves(load_tasks(names)):
        docs = list(task.eval_docs)[:limit] if limit else list(task.eval_docs)
        total += sum(len(task.doc_to_choice(doc)) if task.OUTPUT_TYPE == "multiple_choice" else 1 for doc in docs)
    return total


def _leaves(tasks: dict[str, Any]) -> list[Any]:
    out = []
    for value in tasks.values():
        out += _leaves(value) if isinstance(value, dict) else [value]
    return out


def measure_capability(c: CapabilityConfig, models: list[str], base_url: str, tokenizer: str,
                       api_key_env: str) -> dict[str, Any]:
    """Every task asked of every model id through `base_url`; per model and task, each metric with its standard
    error, and the versions that make the figures comparable."""
    lm_eval = _harness()
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    load_tasks(c.tasks)  # every task loads before any model is asked
    token = os.environ.get(api_key_env)  # read here, where it is used; handed to the client, never logged
    scores: dict[str, dict[str, dict[str, float]]] = {}
    versions: dict[str, Any] = {}
    samples: dict[str, int] = {}
    start = time.perf_counter()
    for model in models:
        lm = LocalCompletionsAPI(base_url=f"{base_url.rstrip('/')}/completions", model=model, tokenizer=tokenizer,
                                 tokenizer_backend="huggingface", batch_size=c.batch_size,
                                 num_concurrent=c.num_concurrent, max_retries=3,
                                 header={"Authorization": f"Bearer {token}"} if token else {})
        results = lm_eval.simple_evaluate(model=lm, tasks=c.tasks, limit=c.limit, log_samples=False,
                                          task_manager=_manager(tuple(c.tasks)), bootstrap_iters=1000, random_seed=0,
                                          numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
        scores[model] = {task: {k.removesuffix(",none"): float(v) for k, v in figures.items()
                                if k.endswith(",none") and isinstance(v, (int, float))}
                         for task, figures in results["results"].items()}
        versions = {task: v for task, v in results.get("versions", {}).items()}
        samples = {task: n.get("effective", n.get("original")) if isinstance(n, dict) else n
                   for task, n in results.get("n-samples", {}).items()}
    return {"harness": lm_eval.__version__, "tasks": c.tasks, "limit": c.limit, "task_versions": versions,
            "documents": samples, "scores": scores, "seconds": time.perf_counter() - start}


def own_tasks() -> set[str]:
    return {path.stem for path in TASKS_DIR.glob("*.yaml")}


@functools.lru_cache(maxsize=4)
def _manager(names: tuple[str, ...]) -> Any:
    """The harness's task index, once a process (indexing its thousands of task files takes seconds); only the
    project's own when those are all the run asks for."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=not set(names) <= own_tasks())
