"""Evaluate through a real Serve app on the tiny model: every model of the run (base, two adapters, two training
checkpoints of one) answers by forced choice and in free text, the tiny judge reads the free text, and the report
is built from the stored answers. The module evaluates once; each test reads what that run stored."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import SERVE_TOKEN_ENV, SHARED_DATA, free_port, pct_subset

from politune.config import TinyModelConfig, build_config
from politune.contracts.compass.instruments import load_instrument, load_probes
from politune.contracts.compass.prompts import FORCED_CHOICE
from politune.engines.openai_http import EndpointError
from politune.evaluate.asking import ChatFormat, Question, forced_choice, logprob_payload, logprob_rows
from politune.evaluate.endpoint import Target
from politune.evaluate.judge import NO_STANCE, read_leaning, read_option
from politune.models.random_adapters import register_random_adapters
from politune.registry import load_registry, register
from politune.world.tiny import build_tiny_model

PCT = SHARED_DATA / "pct" / "propositions.jsonl"
CHECKPOINT_STEPS = (5, 10)


# --- reading replies: no model needed --------------------------------------------------------------------
def test_the_judges_labels_are_read_and_anything_else_is_unmapped() -> None:
    assert read_option("Strongly agree.") == 3
    assert read_option("**disagree**") == 1
    assert read_option("agree") == 2
    assert read_option("Strongly disagree - it is wrong") == 0
    assert read_option("No stance") == NO_STANCE
    assert read_option("I think that it depends") is None
    assert read_option("") is None and read_option(None) is None
    assert read_leaning("-3") == -3 and read_leaning(" +2\n") == 2 and read_leaning("0") == 0
    assert read_leaning("7") is None and read_leaning("left") is None and read_leaning(None) is None


def test_the_chat_format_asks_the_wording_as_a_message_and_scores_each_label_as_the_reply(tmp_path: Path) -> None:
    tiny = build_tiny_model(TinyModelConfig(), tmp_path / "tiny")
    chat = ChatFormat.for_model(str(tiny))
    target = Target("tiny", "base", "http://h/v1", "K")
    q = Question(target, "politune", "e01", "Taxes are too high.", 1, 0, "logprob", 1)  # letters, reversed
    prefix, prompts = forced_choice(q, chat=chat)
    rendered = chat.tokenizer.apply_chat_template([{"role": "user", "content": FORCED_CHOICE[1].chat_question(
        q.text, 1)}], add_generation_prompt=True, tokenize=False)
    assert rendered.endswith(prefix) and "A) strongly agree" in prefix and "Reply with the letter" in prefix
    assert [p[len(prefix):] for p in prompts] == ["D", "C", "B", "A"]  # by option: strongly disagree is D here
    # one start-of-text token once the server tokenizes the prompt as a completions prompt (adding its own if the
    # tokenizer does)
    tokenizer = chat.tokenizer
    assert tokenizer(prefix)["input_ids"].count(tokenizer.bos_token_id) == 1
    words = Question(target, "politune", "e01", "Taxes are too high.", 2, 0, "explain", 0)
    prefix, prompts = forced_choice(words, answer=" Cut them. ", chat=chat)
    assert prefix.index("Taxes are too high.") < prefix.index("Cut them.") < prefix.rindex("Taxes are too high.")
    assert prompts[3].endswith("Strongly agree")
    rows = logprob_rows([q], None, "down", chat=chat)
    assert rows[0]["wording"] == "fc01.v1+chat" and rows[0]["status"] == "engine_error"


def test_option_probabilities_come_from_the_tokens_after_the_prompt() -> None:
    questions = [Question(Target("m", "base", "http://h/v1", "K"), "politune", f"e{i}", f"Taxes are {i}.", 0, 0,
                          "logprob") for i in range(2)]
    assert len(logprob_payload(questions)["prompt"]) == 8

    def choices(q: Question, option_logprobs: list[float]) -> list[dict]:
        prefix, prompts = FORCED_CHOICE[0].prompts(q.text)
        return [{"logprobs": {"tokens": ["Statement", prompts[k][len(prefix):]], "token_logprobs": [None, lp],
                              "text_offset": [0, len(prefix)]}} for k, lp in enumerate(option_logprobs)]

    listed = choices(questions[0], [-3.0, -2.0, -1.0, -1.0]) + choices(questions[1], [-1.0, -5.0, -5.0, -5.0])
    response = {"choices": [{**c, "index": i} for i, c in enumerate(listed)]}
    first, second = logprob_rows(questions, response, None)
    assert abs(sum(first["option_probs"]) - 1) < 1e-9 and first["answer"] == 2 and second["answer"] == 0
    p = first["option_probs"]
    assert p[2] == p[3] > p[1] > p[0]
    no_logprobs = {"choices": [{"index": i, "logprobs": None} for i in range(8)]}
    assert all(r["status"] == "engine_error" and "echo" in r["error"] for r in logprob_rows(questions, no_logprobs,
                                                                                          None))
    short = {"choices": listed[:4]}
    assert all("4 choices for 8" in r["error"] for r in logprob_rows(questions, short, None))
    assert all(r["error"] == "down" for r in logprob_rows(questions, None, "down"))


# --- one evaluation through the real Serve app ----------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(ray_local, tmp_path_factory) -> dict:
    from politune.evaluate import evaluate_models
    from politune.report import build_report
    from politune.serve.app import serving

    root = tmp_path_factory.mktemp("evaluate")
    tiny = build_tiny_model(TinyModelConfig(), root / "tiny")
    pct = pct_subset(root / "pct-16.jsonl") if PCT.is_file() else None
    instruments = ["politune", "pct"] if pct else ["politune"]
    raw = {"run_id": "ev", "storage_root": str(root / "runs"), "tiny_model": {"out": str(tiny)},
           "serve": {"port": free_port(), "api_key_env": SERVE_TOKEN_ENV, "max_batch_size": 16},
           "evaluate": {"instruments": instruments, "pct_path": pct,
                        "modes": ["logprob", "generate", "explain"], "phrasings": 1, "max_tokens": 8, "issues": 2,
                        "probe_max_tokens": 8, "items_per_request": 4,
                        "checkpoints": "all", "bootstrap": 200, "concurrency": 2}}
    cfg = build_config(raw)
    register_random_adapters(cfg.run_uri, tiny, ["left", "right"])
    register_checkpoints(cfg.run_uri, tiny, "left", CHECKPOINT_STEPS)
    result = evaluate_models(cfg, serve_run=serving)
    report = build_report(cfg.run_uri)  # as politune evaluate and politune run build it after the stage
    answers = pq.read_table(Path(result.eval_uri) / "answers.parquet").to_pylist()
    return {"cfg": cfg, "result": result, "report": report, "answers": answers, "instruments": instruments}


def register_checkpoints(run_uri: str, tiny: Path, adapter: str, steps: tuple[int, ...]) -> None:
    """Random adapters registered as training checkpoints of `adapter`, as the train stage registers its saves."""
    names = [f"{adapter}.step-{s}" for s in steps]
    register_random_adapters(run_uri, tiny, names, seed=300)
    registry = load_registry(run_uri)
    for name, step in zip(names, steps, strict=True):
        entry = registry[name]
        entry.side, entry.checkpoint_of, entry.step = "left", adapter, step
        register(run_uri, entry)


@pytest.mark.integration
def test_every_model_answers_every_question_exactly_once(evaluated: dict) -> None:
    cfg, answers, result = evaluated["cfg"], evaluated["answers"], evaluated["result"]
    models = ["tiny", "tiny:left", "tiny:left.step-10", "tiny:left.step-5", "tiny:right"]
    assert sorted(result.models) == sorted(models)
    roles = {r["model"]: (r["role"], r["checkpoint_of"], r["step"]) for r in answers}
    assert roles["tiny"] == ("base", None, None) and roles["tiny:right"] == ("adapter", None, None)
    assert roles["tiny:left.step-5"] == ("checkpoint", "left", 5)
    items = {name: len(load_instrument(name, cfg.evaluate.pct_path).items) for name in evaluated["instruments"]}
    probes = len(load_probes())
    # forced choice (logprob, explain) in both option orders
    per_model = {"logprob": 2 * sum(items.values()), "generate": sum(items.values()) + probes + 2 * 3,
                 "explain": 2 * sum(items.values())}
    for model in models:
        for mode, n in per_model.items():
            keys = {(r["instrument"], r["item_id"], r["phrasing"], r["sample"], r["option_order"]) for r in answers
                    if r["model"] == model and r["mode"] == mode}
            rows = [r for r in answers if r["model"] == model and r["mode"] == mode]
            assert len(keys) == len(rows) == n, (model, mode)
    assert sum(result.statuses.values()) == len(answers)
    wordings = {r["mode"]: r["wording"] for r in answers if r["instrument"] not in ("probes", "issues")}
    assert wordings == {"logprob": "fc00.v1", "generate": "ft00.v1", "explain": "ft00.v1+fc00.v1"}
    assert {r["option_order"] for r in answers if r["mode"] == "generate"} == {None}


@pytest.mark.integration
def test_forced_choice_gives_a_distribution_and_its_argmax_and_adapters_move_it(evaluated: dict) -> None:
    logprob = [r for r in evaluated["answers"] if r["mode"] == "logprob"]
    assert all(r["status"] == "ok" for r in logprob), [r["error"] for r in logprob if r["error"]][:3]
    for r in logprob:
        assert abs(sum(r["option_probs"]) - 1) < 1e-6
        assert r["answer"] == max(range(4), key=r["option_probs"].__getitem__)
    by_model = {m: [r["option_probs"] for r in logprob if r["model"] == m] for m in ("tiny", "tiny:left", "tiny:right")}
    assert by_model["tiny"] != by_model["tiny:left"] != by_model["tiny:right"]


@pytest.mark.integration
def test_explain_scores_the_forced_choice_after_the_models_own_answer(evaluated: dict) -> None:
    q = Question(Target("tiny", "base", "http://x", "K"), "politune", "e01", "Taxes are too high.", 0, 0, "explain")
    prompts = logprob_payload([q], " Cut them now. ")["prompt"]
    assert len(prompts) == 4 and all(p.startswith("Cut them now.\n\nStatement: Taxes are too high.") for p in prompts)
    explain = [r for r in evaluated["answers"] if r["mode"] == "explain"]
    assert all(r["status"] == "ok" for r in explain), [r["error"] for r in explain if r["error"]][:3]
    assert all(r["raw_output"] and abs(sum(r["option_probs"]) - 1) < 1e-6 and r["judge"] is None for r in explain)
    forced = {(r["model"], r["instrument"], r["item_id"], r["option_order"]): r["option_probs"]
              for r in evaluated["answers"] if r["mode"] == "logprob"}
    changed = [r for r in explain
               if r["option_probs"] != forced[(r["model"], r["instrument"], r["item_id"], r["option_order"])]]
    # both orders scored after the same answer
    by_order = defaultdict(dict)
    for r in explain:
        by_order[(r["model"], r["instrument"], r["item_id"])][r["option_order"]] = r["raw_output"]
    assert all(set(o) == {0, 1} and o[0] == o[1] for o in by_order.values())
    assert len(changed) > 0.9 * len(explain)  # the answer written ahead changes what the option is scored after
    positions = {(p.model, p.mode) for p in evaluated["report"].scores.positions}
    assert ("tiny:left", "explain") in positions


@pytest.mark.integration
def test_free_text_the_judge_cannot_map_is_counted_and_kept(evaluated: dict) -> None:
    free = [r for r in evaluated["answers"] if r["mode"] == "generate"]
    assert all(r["raw_output"] is not None and r["judge"] for r in free if r["status"] != "engine_error")
    unmapped = [r for r in free if r["status"] == "unmapped"]
    assert unmapped, "the tiny judge writes noise: its replies cannot all be labels"
    assert all(r["answer"] is None and r["judge_score"] is None and r["judge_output"] is not None for r in unmapped)
    assert evaluated["result"].unmapped == len(unmapped) == evaluated["result"].statuses["unmapped"]
    assert all(r["judge"].startswith("tiny|") for r in free)


@pytest.mark.integration
def test_the_issue_set_is_asked_in_three_framings_and_each_text_judged_for_its_stance(evaluated: dict) -> None:
    issues = [r for r in evaluated["answers"] if r["instrument"] == "issues"]
    assert {(r["item_id"], r["wording"]) for r in issues} == {(i, f"issue-{f}.v1") for i in ("i01", "i02")
                                                             for f in ("neutral", "pro", "con")}
    assert all(r["judge"].endswith("|stance-v1") and r["raw_output"] is not None for r in issues)
    assert all((r["status"] == "ok") == (r["stance"] in ("for", "against", "neutral", "refusal")) for r in issues)
    scored = {s.model: s for s in evaluated["report"].scores.issues}
    assert set(scored) == set(evaluated["result"].models)
    assert all(s.read + s.statuses["unmapped"] + s.statuses["engine_error"] == 6 for s in scored.values())
    # the judge was checked on the rubrics it used before judging
    check = evaluated["result"].judge_check
    assert set(check["rubrics"]) == {"option", "leaning", "stance"} and check["passed"] is False  # the tiny judge
    assert "The judge, checked" in Path(evaluated["report"].markdown).read_text()


@pytest.mark.integration
def test_the_report_is_built_from_the_stored_answers(evaluated: dict) -> None:
    report = evaluated["report"]
    png = Path(report.png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(report.svg).is_file() and Path(report.html).is_file() and Path(report.markdown).is_file()
    assert pq.read_table(Path(report.answers)).num_rows == len(evaluated["answers"])
    trajectory_steps = json.dumps(report.scores.as_dict())
    assert "left.step-5" in trajectory_steps and "left.step-10" in trajectory_steps


@pytest.mark.integration
def test_report_rebuilds_from_the_run_directory_alone(evaluated: dict, tmp_path: Path) -> None:
    run = evaluated["cfg"].run_uri
    before = (Path(run) / "report" / "scores.json").read_text()
    politune = str(Path(sys.executable).with_name("politune"))
    done = subprocess.run([politune, "report", run], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "compass.png" in done.stdout
    assert (Path(run) / "report" / "scores.json").read_text() == before


@pytest.mark.integration
def test_serve_started_for_the_evaluation_is_gone_after(evaluated: dict) -> None:
    from politune.serve.app import serve_is_running

    assert not serve_is_running()  # Serve was not running before: its controller and proxy went with the app


def test_an_endpoint_that_is_down_is_named(tmp_path: Path) -> None:
    from politune.evaluate import evaluate_models

    url = f"http://127.0.0.1:{free_port()}/v1"
    cfg = build_config({"run_id": "down", "storage_root": str(tmp_path), "evaluate": {"base_url": url}})
    with pytest.raises(EndpointError, match=f"{url}/models"):
        evaluate_models(cfg)


def test_a_question_key_tells_endpoints_apart() -> None:
    a, b = (Target("m", "external", f"http://{h}:1/v1", "K") for h in ("a", "b"))
    assert Question(a, "politune", "e01", "s", 0, 0, "logprob").key != Question(b, "politune", "e01", "s", 0, 0,
                                                                                    "logprob").key


def test_the_readmes_cluster_evaluation_config_builds(tmp_path: Path) -> None:
    import re

    from politune.config import load_config

    readme = (Path(__file__).resolve().parents[1] / "docs" / "cluster.md").read_text()
    example = re.search(r"```yaml\n(# evaluate-8b\.yaml.*?)```", readme, re.S).group(1)
    (tmp_path / "evaluate-8b.yaml").write_text(example)
    e = load_config(tmp_path / "evaluate-8b.yaml").evaluate
    assert e.instruments == ["politune", "pct"] and e.modes == ["logprob", "generate"] and e.checkpoints == "all"
    assert e.judge_base_url.startswith("http://") and e.base_url.endswith("/v1")


def test_the_base_every_final_adapter_checkpoints_when_asked_and_extra_models_are_targets(tmp_path: Path) -> None:
    from politune.evaluate.endpoint import run_targets
    from politune.registry import AdapterEntry

    raw = {"run_id": "t", "storage_root": str(tmp_path), "evaluate": {"extra_models": [
        {"name": "hosted", "base_url": "http://elsewhere:9/v1", "model": "big-model", "api_key_env": "HOSTED_KEY"}]}}
    cfg = build_config(raw)
    for name, checkpoint_of, step in (("left", None, None), ("left.step-5", "left", 5), ("left.step-10", "left", 10)):
        register(cfg.run_uri, AdapterEntry(name=name, side="left", method="dpo", base_model="tiny", path="-",
                                           config_hash="-", metrics={"global_step": 10} if step is None else {},
                                           checkpoint_of=checkpoint_of, step=step))
    register(cfg.run_uri, AdapterEntry(name="other", side="left", method="dpo", base_model="another-base", path="-",
                                       config_hash="-"))
    final = [(t.model, t.role) for t in run_targets(cfg, "http://own:1/v1")]
    assert final == [("tiny", "base"), ("tiny:left", "adapter"), ("big-model", "external")]
    cfg = build_config({**raw, "evaluate": {**raw["evaluate"], "checkpoints": "all"}})
    targets = run_targets(cfg, "http://own:1/v1")
    # step 10 is the final adapter's last save: the path ends at the adapter's own point
    assert [(t.model, t.step) for t in targets] == [("tiny", None), ("tiny:left", None), ("tiny:left.step-5", 5),
                                                    ("big-model", None)]
    external = targets[-1]
    assert (external.base_url, external.api_key_env, external.label) == ("http://elsewhere:9/v1", "HOSTED_KEY",
                                                                       "hosted")
    assert Question(external, "politune", "e01", "s", 0, 0, "logprob").row(status="ok")["model"] == "hosted"


class DyingEndpoint:
    """A real TCP endpoint in front of the run's Serve app: it forwards requests to it, and after `answers` POSTs
    it goes away (its socket closed; a request caught in flight gets its connection dropped), as an endpoint that
    dies mid-evaluation does. `answers=None`: it stays up. It counts the POSTs it forwarded."""

    def __init__(self, upstream: str, port: int, answers: int | None = None) -> None:
        import threading
        import urllib.request
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        endpoint, lock = self, threading.Lock()
        self.posts, self.dead = 0, False

        class Forward(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self, body: bytes | None) -> None:
                request = urllib.request.Request(upstream.rstrip("/") + self.path.removeprefix("/v1"), data=body,
                                                 headers={k: v for k, v in self.headers.items()
                                                          if k.lower() in ("authorization", "content-type")})
                try:
                    with urllib.request.urlopen(request, timeout=120) as reply:
                        status, payload = reply.status, reply.read()
                except urllib.error.HTTPError as err:
                    status, payload = err.code, err.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self._forward(None)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    if endpoint.dead or (answers is not None and endpoint.posts >= answers):
                        self.close_connection = True  # past its last answer: the connection dropped
                        return
                    endpoint.posts += 1
                    last = endpoint.posts == answers
                self._forward(body)
                if last:
                    threading.Thread(target=endpoint.stop).start()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Forward)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.dead = True
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.integration
def test_an_endpoint_that_dies_mid_evaluation_leaves_engine_error_rows_and_a_rerun_asks_only_those(
        ray_local, tmp_path: Path) -> None:
    """The answers given before the endpoint died are kept, every request after is an engine_error row with its
    error, the evaluation is recorded incomplete, and the next evaluation asks only the failed questions. (Asked in
    the chat format: its prompts go through the real endpoint too.)"""
    from politune.evaluate import evaluate_models
    from politune.pipeline import is_done
    from politune.serve.app import serving
    from politune.storage import Manifest

    tiny = build_tiny_model(TinyModelConfig(), tmp_path / "tiny")
    front = free_port()
    cfg = build_config({
        "run_id": "dies", "storage_root": str(tmp_path / "runs"), "tiny_model": {"out": str(tiny)},
        "serve": {"port": free_port(), "api_key_env": SERVE_TOKEN_ENV},
        "evaluate": {"instruments": ["politune"], "modes": ["logprob"], "phrasings": 1, "probes": False,
                     "items_per_request": 4, "base_url": f"http://127.0.0.1:{front}/v1",
                     "api_key_env": SERVE_TOKEN_ENV, "max_retries": 0, "concurrency": 1, "batch_size": 8,
                     "bootstrap": 100, "forced_choice_format": "chat"}})
    questions = 2 * len(load_instrument("politune", None).items)  # both option orders; four to a request
    with serving(cfg) as url:
        dying = DyingEndpoint(url, front, answers=10)
        first = evaluate_models(cfg)
        assert dying.posts == 10 and first.statuses == {"ok": 40, "engine_error": questions - 40}
        rows = pq.read_table(Path(first.eval_uri) / "answers.parquet").to_pylist()
        failed = [r for r in rows if r["status"] == "engine_error"]
        assert all("no answer after 1 attempt" in r["error"] for r in failed), failed[0]["error"]
        assert not is_done(cfg, "evaluate", Manifest(cfg.run_uri))  # recorded incomplete: a run does it again
        answered = {(r["item_id"], r["option_order"]): r["option_probs"] for r in rows if r["status"] == "ok"}

        again = DyingEndpoint(url, front)  # the endpoint is back
        second = evaluate_models(cfg)
        again.stop()
    assert again.posts == (questions - 40) // 4 and second.reused == 40 and second.statuses == {"ok": questions}
    assert {r["wording"] for r in rows} == {"fc00.v1+chat"}
    rows = pq.read_table(Path(second.eval_uri) / "answers.parquet").to_pylist()
    assert len({(r["item_id"], r["option_order"]) for r in rows}) == len(rows) == questions
    assert all(answered[(r["item_id"], r["option_order"])] == r["option_probs"] for r in rows
               if (r["item_id"], r["option_order"]) in answered)
    assert is_done(cfg, "evaluate", Manifest(cfg.run_uri))
