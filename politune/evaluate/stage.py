"""The evaluate stage: every model of the run (the base, each adapter; with `checkpoints: all` each saved
checkpoint; with `adapter_scales` each adapter at those strengths) and the config's extra models answer the
instruments' propositions and the probe questions through an OpenAI-compatible endpoint; the answers go to
`eval/answers.parquet` (contracts/compass/schema.py); with `capability.tasks`, the run's models are also scored on
lm-evaluation-harness tasks through the same endpoint (capability.py, `eval/capability.json`); the report is built
from them afterwards (politune/report, which `politune run`, `politune evaluate` and jobs/evaluate.py call after
this stage).

The endpoint is the run's own Serve app unless evaluate.base_url names another; the requests flow through
ray.data.llm's HTTP processor (bounded concurrency, retries with back-off), and a request that still fails is an
`engine_error` row: every question asked ends as exactly one row. An evaluation with such rows is recorded as
incomplete; the next one of the same config keeps every answer it has and asks only the failed questions.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from politune.config import RunConfig
from politune.contracts.compass.instruments import load_instrument, load_issues, load_judge_check, load_probes
from politune.contracts.compass.prompts import ISSUE_FRAMINGS, ORDERS, PROMPT_VERSION
from politune.contracts.compass.schema import ANSWER_SCHEMA, ENGINE_ERROR, EXTERNAL
from politune.engines.metrics import StageMetrics
from politune.engines.openai_http import post_all
from politune.evaluate.asking import (
    ISSUES,
    PROBES,
    RUBRIC_INSTRUMENT,
    ChatFormat,
    Question,
    chat_payload,
    chat_text,
    judge_payload,
    judged_row,
    logprob_payload,
    logprob_rows,
    row_key,
)
from politune.evaluate.capability import FILE as CAPABILITY_FILE
from politune.evaluate.capability import load_tasks, measure_capability
from politune.evaluate.endpoint import ServeRun, Target, check_targets, key_env, run_endpoint, run_targets
from politune.evaluate.judge import reads_as_labelled
from politune.models import resolve_model
from politune.models.scaled_adapters import register_scaled_adapters
from politune.prepare import prepares
from politune.ray_runtime import init_ray
from politune.storage import Manifest, exists, join, read_json, resolve, write_json

COMPLETIONS, CHAT = "/completions", "/chat/completions"


@dataclass
class EvaluateResult:
    eval_uri: str
    models: list[str]
    statuses: dict[str, int]               # answer rows by status
    seconds: dict[str, float]              # by pass: logprob, generate, judge
    unmapped: int = 0
    judge: str = ""
    reused: int = 0                        # answers kept from an earlier, incomplete evaluation of the same config
    judge_check: dict[str, Any] | None = None  # the judge's accuracy on the labelled answers (_check_judge)

    @property
    def failed(self) -> int:
        return self.statuses.get(ENGINE_ERROR, 0)


def evaluate_identity(cfg: RunConfig, manifest: Manifest) -> dict[str, tuple[str, dict[str, str]]]:
    """What the evaluation is made of: (config hash, inputs): the served base model and every adapter the
    manifest records (the models evaluate asks)."""
    adapters = {a: manifest.fingerprint(a) for a in sorted(manifest.data["artifacts"]) if a.startswith("adapter:")}
    return {"eval": (cfg.section_hash("evaluate", "dtype"), {"serve.base_model": cfg.serve.base_model, **adapters})}


def evaluate_models_loaded(cfg: RunConfig) -> list[tuple[str, str]]:
    """The model evaluate loads on this side of an endpoint: the served base, when it starts the run's own app."""
    return [] if cfg.evaluate.base_url else [("serve.base_model", cfg.serve.base_model)]


@prepares(evaluate_models_loaded)
def evaluate_models(cfg: RunConfig, serve_run: ServeRun | None = None) -> EvaluateResult:
    """Every model of the run asked every question; the answers stored in eval/. `serve_run`: how to serve the
    run's models for the evaluation when nothing serves them yet (serve.app.serving; the report is built from the
    answers afterwards, by report.build_report)."""
    cfg = cfg.with_absolute_paths()
    e = cfg.evaluate
    pct_path = str(Path(e.pct_path).absolute()) if e.pct_path and "://" not in e.pct_path else e.pct_path
    # bad instrument files fail here, before Ray or a server starts
    instruments = {name: load_instrument(name, pct_path) for name in e.instruments}
    probes = load_probes() if e.probes else []
    issues = load_issues()[:e.issues]
    seconds: dict[str, float] = {}
    if e.capability.tasks:  # every task loads (its data found) before any model is asked
        load_tasks(e.capability.tasks)
    if e.adapter_scales:  # before the endpoint starts: the run's own app serves the copies as registered
        register_scaled_adapters(cfg.run_uri, e.adapter_scales, cfg.serve.base_model)
    eval_uri = join(cfg.run_uri, "eval")
    config_hash, inputs = evaluate_identity(cfg, Manifest(cfg.run_uri))["eval"]
    kept = _answers_to_keep(eval_uri, {"config_hash": config_hash, "inputs": inputs})
    with run_endpoint(cfg, serve_run) as base_url:
        targets = run_targets(cfg, base_url)
        judge = Target(e.judge_model or cfg.serve.served_id, "judge", e.judge_base_url or base_url,
                       e.judge_api_key_env if e.judge_base_url else key_env(cfg))
        needs_judge = bool({"generate", "generate_forced"} & set(e.modes)) or bool(probes) or bool(issues)
        check_targets(targets + ([judge] if needs_judge else []))
        init_ray(cfg)
        metrics = StageMetrics(cfg.run_id, "evaluate")
        rubrics = ["option"] if {"generate", "generate_forced"} & set(e.modes) else []
        rubrics += (["leaning"] if probes else []) + (["stance"] if issues else [])
        judge_check = _check_judge(cfg, judge, rubrics, seconds) if rubrics and e.judge_check else None
        rows: list[dict[str, Any]] = []

        chat = ChatFormat.for_model(resolve_model(cfg.serve.base_model, cfg)) \
            if e.forced_choice_format == "chat" else None

        def chat_for(q: Question) -> ChatFormat | None:
            """The run's models are asked in the configured format; extra models (their tokenizers unknown here)
            in plain text."""
            return chat if q.target.role != EXTERNAL else None

        def missing(questions: list[Question]) -> list[Question]:
            """The questions an earlier evaluation left unanswered (all of them, without one)."""
            return [q for q in questions if not all(k in kept for k in q.row_keys())]

        if "logprob" in e.modes:
            start = time.perf_counter()
            questions = missing([Question(t, name, p.id, p.statement, phrasing, 0, "logprob", order) for t in targets
                                 for name, inst in instruments.items() for p in inst.items
                                 for phrasing in range(e.phrasings) for order in ORDERS])
            groups = _chunks(questions, e.items_per_request)
            replies = _post(cfg, COMPLETIONS, {group[0].key: (group[0], logprob_payload(group, chat=chat_for(group[0])))
                                               for group in groups})
            rows += [row for group in groups
                     for row in logprob_rows(group, *replies[group[0].key], chat=chat_for(group[0]))]
            seconds["logprob"] = time.perf_counter() - start
            metrics.count("answers", len(rows))
        if "explain" in e.modes:
            explain = _explain_rows(cfg, missing([Question(t, name, p.id, p.statement, phrasing, sample, "explain")
                                                  for t in targets for name, inst in instruments.items()
                                                  for p in inst.items for phrasing in range(e.phrasings)
                                                  for sample in range(e.samples)]), seconds, chat_for)
            metrics.count("answers", len(explain))
            rows += explain
        free_text = [Question(t, PROBES, p.id, p.question, 0, sample, "generate") for t in targets for p in probes
                     for sample in range(e.samples)]
        free_text += [Question(t, ISSUES, i.id, i.issue, framing, sample, "generate") for t in targets
                      for i in issues for framing in range(len(ISSUE_FRAMINGS)) for sample in range(e.samples)]
        for mode in ("generate", "generate_forced"):
            if mode in e.modes:
                free_text += [Question(t, name, p.id, p.statement, phrasing, sample, mode) for t in targets
                              for name, inst in instruments.items() for p in inst.items
                              for phrasing in range(e.phrasings) for sample in range(e.samples)]
        free_text = missing(free_text)
        if free_text:
            free = _free_text_rows(cfg, free_text, judge, seconds)
            metrics.count("answers", len(free))
            rows += free
        if e.capability.tasks:  # the run's own models only: an external model's tokenizer is not known here
            capability = measure_capability(e.capability, [t.model for t in targets if t.role != EXTERNAL], base_url,
                                            e.capability.tokenizer or resolve_model(cfg.serve.base_model, cfg),
                                            key_env(cfg))
            write_json(join(eval_uri, CAPABILITY_FILE), capability)
            seconds["capability"] = capability["seconds"]
    asked = {row_key(r) for r in rows}
    reused = [r for k, r in kept.items() if k not in asked]
    rows = reused + rows
    _write_answers(join(eval_uri, "answers.parquet"), rows)
    statuses = dict(Counter(r["status"] for r in rows))
    write_json(join(eval_uri, "evaluation.json"), {
        "instruments": e.instruments, "pct_path": pct_path, "modes": e.modes, "phrasings": e.phrasings,
        "samples": e.samples, "probes": [p.id for p in probes], "issues": [i.id for i in issues],
        "capability": e.capability.tasks,
        "endpoint": base_url if e.base_url else "own",
        "models": [t.model for t in targets], "judge": f"{judge.model} at {judge.base_url}" if needs_judge else None,
        "prompt_version": PROMPT_VERSION, "seconds": seconds, "statuses": statuses, "bootstrap": e.bootstrap,
        "seed": e.seed, "identity": {"config_hash": config_hash, "inputs": inputs}, "reused": len(reused),
        "judge_check": judge_check})
    # with failed requests the evaluation is recorded incomplete: the next run asks only what failed
    Manifest(cfg.run_uri).record("eval", path=eval_uri, config_hash=config_hash, inputs=inputs,
                                 models=[t.model for t in targets] + ([judge.model] if needs_judge else []),
                                 counts={"answers": len(rows), **statuses}, complete=ENGINE_ERROR not in statuses)
    return EvaluateResult(eval_uri, [t.model for t in targets], statuses, seconds,
                          unmapped=statuses.get("unmapped", 0), judge=judge.model if needs_judge else "",
                          reused=len(reused), judge_check=judge_check)


def _answers_to_keep(eval_uri: str, identity: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """The answered rows (any status but engine_error) of an earlier evaluation with the same identity (evaluate's
    config and the adapters it asked), by row_key; none when there is none, or it was of another config."""
    info_uri, answers_uri = join(eval_uri, "evaluation.json"), join(eval_uri, "answers.parquet")
    if not (exists(info_uri) and exists(answers_uri)) or read_json(info_uri).get("identity") != identity:
        return {}
    fs, path = resolve(answers_uri)
    rows = pq.read_table(path, filesystem=fs).to_pylist()
    return {row_key(r): r for r in rows if r["status"] != ENGINE_ERROR}


def _check_judge(cfg: RunConfig, judge: Target, rubrics: list[str], seconds: dict[str, float]) -> dict[str, Any]:
    """The judge scored on the project's labelled answers of each rubric it will use, before it judges anything:
    its accuracy a rubric, and whether it reaches evaluate.judge_min_accuracy (a judge below it is named as such in
    the console and the report; its readings are still stored)."""
    e = cfg.evaluate
    start = time.perf_counter()
    items = [i for i in load_judge_check() if i.rubric in rubrics]
    work = {}
    for item in items:
        q = Question(judge, RUBRIC_INSTRUMENT.get(item.rubric, "judge_check"), item.id, item.prompt, 0, 0,
                     "judge_check")
        work[q.key] = (q, judge_payload(q, item.answer, judge.model, e.judge_max_tokens))
    replies = _post(cfg, CHAT, work)
    checked: dict[str, dict[str, Any]] = {}
    for item, (key, _) in zip(items, work.items(), strict=True):
        response, error = replies[key]
        reply = None if error else chat_text(response)
        by = checked.setdefault(item.rubric, {"asked": 0, "correct": 0, "failed": 0, "items": []})
        by["asked"] += 1
        by["failed"] += error is not None
        correct = error is None and reads_as_labelled(item.rubric, item.label, reply)
        by["correct"] += correct
        by["items"].append({"id": item.id, "label": item.label, "reply": reply, "error": error, "correct": correct})
    for by in checked.values():
        by["accuracy"] = by["correct"] / by["asked"] if by["asked"] else None
    seconds["judge_check"] = time.perf_counter() - start
    passed = all(by["accuracy"] is not None and by["accuracy"] >= e.judge_min_accuracy for by in checked.values())
    return {"judge": f"{judge.model} at {judge.base_url}", "min_accuracy": e.judge_min_accuracy, "passed": passed,
            "rubrics": checked}


def _free_text_rows(cfg: RunConfig, questions: list[Question], judge: Target,
                    seconds: dict[str, float]) -> list[dict[str, Any]]:
    """Free-text answers (propositions in generate mode, probes), then the judge's reading of each."""
    e = cfg.evaluate
    start = time.perf_counter()
    rows, answered = _answer_freely(cfg, questions)
    seconds["generate"] = time.perf_counter() - start
    start = time.perf_counter()
    judge_q = {key: (Question(judge, q.instrument, q.item_id, q.text, q.phrasing, q.sample, q.mode),
                     judge_payload(q, text, judge.model, e.judge_max_tokens)) for key, (q, text) in answered.items()}
    verdicts = _post(cfg, CHAT, judge_q)
    seconds["judge"] = time.perf_counter() - start
    for key, (q, text) in answered.items():
        response, error = verdicts[key]
        rows.append(judged_row(q, text, judge.model, None if error else chat_text(response), error))
    return rows


def _answer_freely(cfg: RunConfig, questions: list[Question]
                   ) -> tuple[list[dict[str, Any]], dict[str, tuple[Question, str]]]:
    """Each question answered in free text: (the rows of the requests that failed, the answers by key)."""
    e = cfg.evaluate
    replies = _post(cfg, CHAT, {q.key: (q, chat_payload(q, e.probe_max_tokens if q.instrument in (PROBES, ISSUES)
                                                         else e.max_tokens, e.temperature, e.seed))
                                for q in questions})
    rows, answered = [], {}
    for q in questions:
        response, error = replies[q.key]
        if error is not None:
            rows.append(q.row(status=ENGINE_ERROR, error=error))
        else:
            answered[q.key] = (q, chat_text(response))
    return rows, answered


def _explain_rows(cfg: RunConfig, questions: list[Question], seconds: dict[str, float],
                  chat_for: Callable[[Question], ChatFormat | None]) -> list[dict[str, Any]]:
    """Explain mode: each proposition answered in free text, then its forced choice scored after that answer, in
    both option orders (one request: the same answer ahead of each). A failed free-text request is one
    engine_error row a order, as its forced choices would have been."""
    start = time.perf_counter()
    failed, answered = _answer_freely(cfg, questions)
    rows = [{**row, "option_order": order} for row in failed for order in ORDERS]
    both = {key: [q.in_order(order) for order in ORDERS] for key, (q, _) in answered.items()}
    scored = _post(cfg, COMPLETIONS, {key: (q, logprob_payload(both[key], text, chat_for(q)))
                                      for key, (q, text) in answered.items()})
    for key, (q, text) in answered.items():
        rows += [{**row, "raw_output": text}
                 for row in logprob_rows(both[key], *scored[key], answer=text, chat=chat_for(q))]
    seconds["explain"] = time.perf_counter() - start
    return rows


def _chunks(questions: list[Question], size: int) -> list[list[Question]]:
    """Consecutive questions of the same model, `size` at most a group."""
    groups: list[list[Question]] = []
    for q in questions:
        if groups and len(groups[-1]) < size and groups[-1][0].target == q.target:
            groups[-1].append(q)
        else:
            groups.append([q])
    return groups


def _post(cfg: RunConfig, route: str,
          work: dict[str, tuple[Question, dict[str, Any]]]) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
    """Each payload to its question's endpoint, one processor run per endpoint."""
    e = cfg.evaluate
    by_endpoint: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for key, (q, payload) in work.items():
        by_endpoint.setdefault((q.target.base_url, q.target.api_key_env), {})[key] = payload
    replies: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
    for (url, token_env), payloads in by_endpoint.items():
        replies.update(post_all(url, route, payloads, api_key_env=token_env, batch_size=e.batch_size,
                                concurrency=e.concurrency, qps=e.qps, max_retries=e.max_retries,
                                num_cpus=e.request_num_cpus))
    return replies


def _write_answers(uri: str, rows: list[dict[str, Any]]) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ANSWER_SCHEMA), path, filesystem=fs)
