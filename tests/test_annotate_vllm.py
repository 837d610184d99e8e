"""The `vllm` annotate engine where no vLLM runs: the ray.data.llm processor it builds for a GPU cluster
and for CPU, the functions that turn vLLM's answers into Annotation rows, and the stage's
staging/merge/resume of logprob mode with a stand-in engine. test_vllm_cpu.py runs the real thing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data

from politune.annotate.scale_rows import STAGING, annotate_by_scale, merge_scales
from politune.annotate.stage import annotate_documents
from politune.config import build_config, load_preset
from politune.contracts.annotator import vllm_engine
from politune.contracts.annotator.parse import expected_and_argmax
from politune.contracts.annotator.prompts import ANSWERS, JSON_SCHEMA, SCALES, scale_messages
from politune.contracts.annotator.schema import ANNOTATION_SCHEMA
from politune.contracts.annotator.vllm_engine import ERROR_COLUMN, SCALE_ROW_SCHEMA, processor_config
from politune.corpus.generate import generate_corpus
from politune.ingest import ingest_corpus

ANSWER_IDS = list(range(100, 111))


def gpu_config(**annotate):
    return load_preset("llama3-8b", [f"annotate.{k}={v}" for k, v in annotate.items()])


def test_gpu_preset_places_a_tensor_parallel_replica_on_one_node() -> None:
    cfg = gpu_config(concurrency=3, max_model_len=8192, mode="generate")
    config = processor_config(cfg)
    assert config.model_source == "meta-llama/Meta-Llama-3-70B-Instruct"
    assert config.engine_kwargs["tensor_parallel_size"] == 8
    assert config.engine_kwargs["pipeline_parallel_size"] == 1
    assert config.engine_kwargs["max_model_len"] == 8192
    assert config.engine_kwargs["enable_prefix_caching"] is True
    assert config.engine_kwargs["structured_outputs_config"] == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert config.placement_group_config["strategy"] == "STRICT_PACK"
    assert [b["GPU"] for b in config.placement_group_config["bundles"]] == [1] * 8
    assert config.concurrency == (3, 3) and config.should_continue_on_error


def test_pipeline_parallel_takes_tensor_times_pipeline_gpus() -> None:
    config = processor_config(gpu_config(tensor_parallel_size=4, pipeline_parallel_size=2, mode="logprob"))
    assert len(config.placement_group_config["bundles"]) == 8
    assert "structured_outputs_config" not in config.engine_kwargs  # logprob mode decodes nothing
    assert not config.detokenize_stage.enabled


def test_engine_kwargs_from_config_win(monkeypatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    cfg = gpu_config(vllm_device="cpu", vllm_stage_num_cpus=0.2, **{"vllm_engine_kwargs.dtype": "float32"})
    config = processor_config(cfg)
    assert [b["CPU"] for b in config.placement_group_config["bundles"]] == [1]
    assert not any(b.get("GPU") for b in config.placement_group_config["bundles"])
    assert config.engine_kwargs["dtype"] == "float32" and config.engine_kwargs["enforce_eager"]
    assert config.chat_template_stage.num_cpus == config.tokenize_stage.num_cpus == 0.2
    assert config.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"


@pytest.mark.integration
def test_build_processor_gives_fixed_replicas_on_the_placement(ray_local, tmp_path: Path) -> None:
    from ray.data.llm import build_processor

    # a local folder, so building does not look the model up on the hub
    cfg = gpu_config(concurrency=2, model=str(tmp_path), mode="generate")
    processor = build_processor(processor_config(cfg), preprocess=lambda r: r, postprocess=lambda r: r)
    assert list(processor.stages) == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    engine_stage = processor.stages["vLLMEngineStage"]
    pool = engine_stage.map_batches_kwargs["compute"]
    assert (pool.min_size, pool.max_size) == (2, 2)
    assert engine_stage.fn_constructor_kwargs["engine_kwargs"]["tensor_parallel_size"] == 8
    assert engine_stage.fn_constructor_kwargs["should_continue_on_error"] is True

    untokenized = processor_config(gpu_config(concurrency=2, model=str(tmp_path), mode="generate",
                                              vllm_tokenize_stage=False))
    processor = build_processor(untokenized, preprocess=lambda r: r, postprocess=lambda r: r)
    assert list(processor.stages) == ["ChatTemplateStage", "vLLMEngineStage", "DetokenizeStage"]  # the engine does


def test_requests_carry_the_projects_prompts() -> None:
    request = vllm_engine.scale_request({"doc_id": "d", "scale": "quality", "text": "Tax the rich"}, ANSWER_IDS)
    assert request["messages"] == scale_messages("Tax the rich", "quality")
    assert request["sampling_params"] == {"temperature": 0.0, "max_tokens": 1, "logprob_token_ids": ANSWER_IDS}
    generate = vllm_engine.generate_request({"doc_id": "d", "text": "x"}, max_new_tokens=40)
    assert generate["sampling_params"]["structured_outputs"] == {"json": JSON_SCHEMA}


def test_scale_result_reads_the_answer_logprobs_whatever_the_key_type() -> None:
    logprobs = {str(t): {"logprob": -float(i), "rank": i + 1, "decoded_token": ANSWERS[i]}
                for i, t in enumerate(ANSWER_IDS)}
    row = {"doc_id": "d", "scale": "ideology", "logprobs": [logprobs], "num_input_tokens": 33}
    result = vllm_engine.scale_result(row, ANSWER_IDS)
    assert result["answer_logprobs"] == [-float(i) for i in range(11)] and result["tokens_in"] == 33
    del logprobs[str(ANSWER_IDS[4])]
    with pytest.raises(ValueError, match="no log-probability for answer tokens \\[104\\]"):
        vllm_engine.scale_result(row, ANSWER_IDS)


@pytest.mark.integration
def test_processor_rows_become_annotations_with_every_failure_recorded(ray_local) -> None:
    batch = pa.Table.from_pylist([
        {"doc_id": "ok", "generated_text": '{"ideology":2,"relevance":9,"quality":7}', "tokens_in": 10,
         "tokens_out": 12, ERROR_COLUMN: ""},
        {"doc_id": "cut", "generated_text": '{"ideology":2,"rel', "tokens_in": 10, "tokens_out": 6, ERROR_COLUMN: ""},
        # an error row skips the postprocess: no answer columns, vLLM's message instead
        {"doc_id": "long", "generated_text": None, "tokens_in": None, "tokens_out": None,
         ERROR_COLUMN: "ValueError: prompt is longer than the maximum model length"},
    ])
    rows = vllm_engine.to_annotations(batch, annotator="m", run_id="t").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "parse_error", "engine_error"]
    assert rows[0]["ideology"] == 2.0 and rows[0]["relevance_argmax"] == 9
    assert rows[1]["raw_output"].endswith('{"ideology":2,"rel') and rows[1]["ideology"] is None
    assert "maximum model length" in rows[2]["raw_output"]
    assert all(r["prompt_version"] == "annotate-v1/generate" for r in rows)


@pytest.mark.integration
def test_a_batch_without_errors_may_lack_the_error_column(ray_local) -> None:
    batch = pa.Table.from_pylist([{"doc_id": "a", "scale": "quality", "answer_logprobs": [0.0] * 11, "tokens_in": 5}])
    rows = vllm_engine.to_scale_rows(batch, annotator="m", run_id="t").to_pylist()
    assert rows == [{"doc_id": "a", "scale": "quality", "answer_logprobs": [0.0] * 11, "tokens_in": 5, "error": None}]


@pytest.mark.integration
def test_merge_scales_gives_expected_value_and_argmax(ray_local) -> None:
    peaked = [0.0 if i == 8 else -30.0 for i in range(11)]
    group = pa.Table.from_pylist([
        {"doc_id": "d", "scale": "ideology", "answer_logprobs": peaked, "tokens_in": 1, "error": None},
        {"doc_id": "d", "scale": "relevance", "answer_logprobs": [0.0] * 11, "tokens_in": 1, "error": None},
        {"doc_id": "d", "scale": "quality", "answer_logprobs": peaked, "tokens_in": 1, "error": None},
    ], schema=SCALE_ROW_SCHEMA)
    row = merge_scales(group, annotator="m", run_id="t").to_pylist()[0]
    assert row["status"] == "ok" and row["ideology_argmax"] == 8 and math.isclose(row["ideology"], 8, abs_tol=1e-9)
    assert math.isclose(row["relevance"], 5.0)  # uniform over 0..10

    failed = group.set_column(4, "error", pa.array([None, "boom", None], pa.string()))
    row = merge_scales(failed, annotator="m", run_id="t").to_pylist()[0]
    assert row["status"] == "engine_error" and row["raw_output"] == "relevance: boom" and row["ideology"] is None
    with pytest.raises(RuntimeError, match="no answer staged for \\['quality'\\]"):
        merge_scales(group.slice(0, 2), annotator="m", run_id="t")


def test_expected_and_argmax_renormalise_over_the_answers() -> None:
    expected, argmax = expected_and_argmax(np.log([[0.5, 0.5] + [1e-300] * 9]) - 3)
    assert math.isclose(expected[0], 0.5) and argmax[0] == 0


def vllm_run(root: Path, source: str, posts: int, mode: str):
    """A run over one generated source, annotated by the vllm engine in files of 8 posts."""
    generate_corpus(posts, root / "corpus", seed=3)
    return build_config({
        "run_id": "v", "storage_root": str(root / "runs"),
        "sources": [{"name": source, "paths": [str(root / "corpus" / source)], "shape": source}],
        "annotate": {"engine": "vllm", "mode": mode, "rows_per_file": 8},
    })


class StandInEngine:
    """Answers like vLLM's logprob mode, without vLLM (which needs its own venv: see test_vllm_cpu.py).
    Its log-probabilities come from the doc_id, so a rerun answers the same."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def score_scales(self, requests: ray.data.Dataset) -> ray.data.Dataset:
        rows = requests.take_all()
        self.sent += [r["key"] for r in rows]
        answers = [{"doc_id": r["doc_id"], "scale": r["scale"], "tokens_in": 1, "error": None,
                    "answer_logprobs": [-abs(hash(r["key"]) % 7 - i) for i in range(11)]} for r in rows]
        return ray.data.from_arrow(pa.Table.from_pylist(answers, schema=SCALE_ROW_SCHEMA))


@pytest.mark.integration
def test_logprob_staging_resumes_and_merges_one_row_a_post_fake_engine(ray_local, tmp_path: Path) -> None:
    cfg = vllm_run(tmp_path, "truthsocial", 40, mode="logprob")
    documents = ingest_corpus(cfg).totals["kept"]
    docs_uri, out_uri = f"{cfg.run_uri}/documents", f"{cfg.run_uri}/annotations"
    staging = Path(out_uri) / STAGING
    doc_ids = sorted(pq.read_table(docs_uri, columns=["doc_id"])["doc_id"].to_pylist())
    # an interrupted run: two posts fully answered, one half, and a half-written file
    staging.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(
        [{"doc_id": d, "scale": s, "answer_logprobs": [0.0] * 11, "tokens_in": 1, "error": None}
         for d in doc_ids[:2] for s in SCALES] + [
         {"doc_id": doc_ids[2], "scale": "ideology", "answer_logprobs": [0.0] * 11, "tokens_in": 1, "error": None}],
        schema=SCALE_ROW_SCHEMA), staging / "earlier.parquet")
    (staging / "torn.parquet").write_bytes(b"PAR1 half a file")

    engine = StandInEngine()
    docs = ray.data.read_parquet(docs_uri, columns=["doc_id", "text"])
    annotate_by_scale(cfg, engine, docs, np.array([], dtype=str), out_uri, docs_uri)
    assert len(engine.sent) == 3 * documents - 7  # only what was not answered before
    assert len(engine.sent) == len(set(engine.sent))
    assert not staging.exists()  # merged, then removed
    rows = pq.read_table(out_uri, schema=ANNOTATION_SCHEMA).to_pylist()
    assert sorted(r["doc_id"] for r in rows) == doc_ids
    assert {r["status"] for r in rows} == {"ok"} and {r["prompt_version"] for r in rows} == {"annotate-v1/logprob"}
    assert {r["relevance"] for r in rows if r["doc_id"] in doc_ids[:2]} == {5.0}  # the earlier answers were used


@pytest.mark.integration
def test_annotate_stage_takes_the_vllm_engine_for_generate_mode_fake_engine(ray_local, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """The stage's generate path hands documents to VLLMEngine.annotate and accounts for every row."""
    cfg = vllm_run(tmp_path, "politosphere", 30, mode="generate")
    ingest_corpus(cfg)

    def annotate(self, docs: ray.data.Dataset) -> ray.data.Dataset:
        def answer(batch: pa.Table) -> pa.Table:
            n = batch.num_rows
            return vllm_engine.to_annotations(pa.table({
                "doc_id": batch["doc_id"], "generated_text": ['{"ideology":1,"relevance":2,"quality":3}'] * n,
                "tokens_in": [1] * n, "tokens_out": [1] * n, ERROR_COLUMN: [""] * n}), "m", "g")
        return docs.map_batches(answer, batch_format="pyarrow")

    monkeypatch.setattr(vllm_engine.VLLMEngine, "annotate", annotate)
    result = annotate_documents(cfg)
    assert result.statuses["ok"] == result.documents > 0


def test_the_readmes_70b_config_builds_four_tensor_parallel_replicas(tmp_path: Path) -> None:
    import re

    from politune.config import load_config

    readme = (Path(__file__).resolve().parents[1] / "docs" / "cluster.md").read_text()
    example = re.search(r"```yaml\n(# annotate-70b\.yaml.*?)```", readme, re.S).group(1)
    (tmp_path / "annotate-70b.yaml").write_text(example)
    config = processor_config(load_config(tmp_path / "annotate-70b.yaml"))
    assert config.model_source == "meta-llama/Meta-Llama-3-70B-Instruct" and config.concurrency == (4, 4)
    assert len(config.placement_group_config["bundles"]) == 8
    assert config.engine_kwargs["gpu_memory_utilization"] == 0.9
