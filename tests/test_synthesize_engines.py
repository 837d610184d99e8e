"""The `vllm` and `openai` synthesizers where neither runs: the processors they build, the row functions
that turn engine answers into replies, and the two-pass pair writing with a stand-in replier.
test_synthesize_vllm_cpu.py runs both for real (vLLM's CPU build, and vLLM's OpenAI server on loopback)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pyarrow as pa
import pytest

from politune.config import ConfigError, load_config, load_preset
from politune.contracts.pair_prompts import instruction_messages
from politune.engines.openai_http import EndpointError, chat_reply, check_endpoint
from politune.engines.vllm_processor import ERROR_COLUMN
from politune.synthesize import llm_writer
from politune.synthesize.llm_writer import KEY_SEPARATOR, to_replies, write_pairs


def test_gpu_preset_synthesizer_is_a_tensor_parallel_vllm_processor() -> None:
    cfg = load_preset("llama3-8b", ["synthesize.concurrency=2"])
    config = llm_writer.vllm_replier(cfg).config
    assert config.model_source == "meta-llama/Meta-Llama-3-70B-Instruct"
    assert config.engine_kwargs["tensor_parallel_size"] == 8
    assert "structured_outputs_config" not in config.engine_kwargs  # answers are free text
    assert config.placement_group_config["strategy"] == "STRICT_PACK"
    assert [b["GPU"] for b in config.placement_group_config["bundles"]] == [1] * 8
    assert config.concurrency == (2, 2) and config.should_continue_on_error
    assert config.detokenize_stage.enabled


def test_openai_engine_needs_an_endpoint() -> None:
    with pytest.raises(ConfigError, match="synthesize: .*openai_base_url"):
        load_preset("local", ["synthesize.engine=openai"])


def test_an_unreachable_endpoint_fails_before_any_work_naming_the_url() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointError, match=f"http://127.0.0.1:{port}/v1/models"):
        check_endpoint(f"http://127.0.0.1:{port}/v1", "tiny", "OPENAI_API_KEY", timeout_s=2)


def test_vllm_rows_carry_the_conversation_and_flag_answers_at_the_limit() -> None:
    messages = instruction_messages("Tax cuts for the rich again.")
    row = llm_writer.vllm_request(llm_writer.request("d1", messages), max_tokens=16)
    assert row["messages"] == messages and row["sampling_params"] == {"temperature": 0.0, "max_tokens": 16}
    assert llm_writer.vllm_reply({"key": "d1", "generated_text": "x", "num_generated_tokens": 16}, 16)["truncated"]
    assert not llm_writer.vllm_reply({"key": "d1", "generated_text": "x", "num_generated_tokens": 3}, 16)["truncated"]


def test_openai_rows_read_answers_cut_offs_and_error_bodies() -> None:
    row = llm_writer.openai_request(llm_writer.request("d1", [{"role": "user", "content": "hi"}]), "tiny", 8)
    assert row["payload"] == {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                              "temperature": 0.0}
    ok = {"choices": [{"message": {"content": "An answer."}, "finish_reason": "stop"}]}
    cut = {"choices": [{"message": {"content": "An answ"}, "finish_reason": "length"}]}
    # vLLM's server answers a prompt over the context length with HTTP 400 and this body
    refused = {"error": {"message": "This model's maximum context length is 512 tokens. However, your prompt contains "
                         "at least 513 input tokens", "type": "BadRequestError", "param": "input_tokens", "code": 400}}
    assert chat_reply(ok) == ("An answer.", False, None)
    assert chat_reply(cut) == ("An answ", True, None)
    text, _, error = chat_reply(refused)
    assert text is None and "maximum context length is 512" in error
    assert llm_writer.openai_reply({"key": "k", "http_response": refused})["error"].startswith("endpoint error")


def test_sampled_requests_carry_the_temperature_and_a_seed_from_their_key() -> None:
    row = llm_writer.request("d1|chosen", [{"role": "user", "content": "hi"}])
    vllm = llm_writer.vllm_request(row, max_tokens=16, temperature=0.8)["sampling_params"]
    assert vllm == {"temperature": 0.8, "max_tokens": 16, "seed": llm_writer.request_seed("d1|chosen")}
    assert llm_writer.request_seed("d1|chosen") != llm_writer.request_seed("d1|rejected")
    payload = llm_writer.openai_request(row, "tiny", 8, temperature=0.8)["payload"]
    assert payload["temperature"] == 0.8 and payload["seed"] == vllm["seed"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from politune.config import TinyModelConfig
    from politune.world.tiny import build_tiny_model

    return build_tiny_model(TinyModelConfig(), tmp_path_factory.mktemp("tiny") / "model")


def test_the_hf_writer_samples_the_same_text_again_and_not_the_greedy_text(tiny_model: Path) -> None:
    from politune.synthesize.hf_writer import HFPairWriter

    posts = [{"doc_id": f"d{i}", "side": side, "text": text} for i, (side, text) in enumerate(
        [("left", "Healthcare is a right."), ("right", "Secure the border and cut taxes."), ("left", "Union strong.")])]
    kwargs = {"model_path": str(tiny_model), "chosen_from": "generated", "max_new_tokens": 12,
              "max_prompt_tokens": 512}
    sampled = HFPairWriter(**kwargs, temperature=1.0)
    first = sampled.write_pairs(posts)
    assert sampled.write_pairs(posts) == first
    greedy = HFPairWriter(**kwargs).write_pairs(posts)
    assert [d["prompt"] for d in greedy] != [d["prompt"] for d in first]


def test_error_rows_become_replies_with_the_error() -> None:
    batch = pa.Table.from_pylist([
        {"key": "a", "text": "fine", "truncated": False, "error": None, ERROR_COLUMN: ""},
        # an error row skips the postprocess: it has the request's columns and the engine's message
        {"key": "b", "text": None, "truncated": None, "error": None,
         ERROR_COLUMN: "ValueError: prompt is longer than the maximum model length"},
    ])
    replies = to_replies(batch, run_id="t").to_pylist()  # outside Ray: counted nowhere
    assert replies[0] == {"key": "a", "text": "fine", "truncated": False, "error": None}
    assert replies[1]["text"] is None and "maximum model length" in replies[1]["error"]


class StandInReplier:
    """Stands in for a processor (no engine runs here): answers every conversation by its key, except
    the keys told to fail, and records what it was asked."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.asked: list[list[str]] = []

    def __call__(self, requests: list[dict[str, str]]) -> dict[str, dict]:
        self.asked.append([r["key"] for r in requests])
        return {r["key"]: {"key": r["key"], "text": None if r["key"] in self.failing else f"reply to {r['key']}\n2nd",
                           "truncated": r["key"].endswith("rejected"),
                           "error": "engine down" if r["key"] in self.failing else None} for r in requests}


POSTS = [{"doc_id": d, "side": "left", "text": f"post {d}"} for d in ("a", "b", "c")]


def test_two_passes_one_draft_a_post_and_failures_carry_their_step() -> None:
    reply = StandInReplier(failing={"c", f"b{KEY_SEPARATOR}chosen"})
    drafts = {d["doc_id"]: d for d in write_pairs(POSTS, reply, "generated")}
    instructions, answers = reply.asked
    assert instructions == ["a", "b", "c"]
    # c has no instruction, so no answers are asked for it
    assert sorted(answers) == sorted(f"{d}{KEY_SEPARATOR}{r}" for d in "ab" for r in ("chosen", "rejected"))
    assert drafts["a"]["prompt"] == "reply to a"  # an instruction is its first line
    assert drafts["a"]["chosen"] == f"reply to a{KEY_SEPARATOR}chosen\n2nd"
    assert drafts["a"]["rejected_truncated"] and not drafts["a"]["chosen_truncated"] and drafts["a"]["error"] is None
    assert drafts["b"]["error"] == "chosen: engine down"
    assert drafts["c"]["error"] == "instruction: engine down"


def test_chosen_from_post_asks_only_for_rejected_answers() -> None:
    reply = StandInReplier(failing=set())
    drafts = write_pairs(POSTS, reply, "post")
    assert all(k.endswith("rejected") for k in reply.asked[1])
    assert [d["chosen"] for d in drafts] == ["post a", "post b", "post c"]
    assert json.dumps(drafts)  # plain rows, ready for the cleaner


def readme_yaml(tmp_path: Path, starts_with: str) -> Path:
    readme = (Path(__file__).resolve().parents[1] / "docs" / "cluster.md").read_text()
    example = re.search(rf"```yaml\n({re.escape(starts_with)}.*?)```", readme, re.S).group(1)
    path = tmp_path / "example.yaml"
    path.write_text(example)
    return path


def test_the_readmes_70b_synthesizer_builds_four_tensor_parallel_replicas(tmp_path: Path) -> None:
    cfg = load_config(readme_yaml(tmp_path, "# synthesize-70b.yaml"))
    config = llm_writer.vllm_replier(cfg).config
    assert config.model_source == "meta-llama/Meta-Llama-3-70B-Instruct" and config.concurrency == (4, 4)
    assert len(config.placement_group_config["bundles"]) == 8 and config.batch_size == 64
    assert cfg.annotate.engine == "vllm"


def test_the_readmes_openai_example_validates(tmp_path: Path) -> None:
    path = readme_yaml(tmp_path, "# or: a model someone else serves")
    cfg = load_config(path, ["run_id=x"])
    assert cfg.synthesize.engine == "openai" and cfg.synthesize.openai_base_url.endswith("/v1")
