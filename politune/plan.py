"""`politune plan`: what a study of N posts costs on the configured cluster, before it runs.

Per stage: the tokens it reads and writes (from the prompts the stages actually send, at about four characters a
token, and the config's lengths), the GPU-hours those tokens take (FLOPs per token = 2 x parameters for a forward
pass, 6 x for LoRA-DPO training: forward, the backward pass to the activations, and the frozen reference's forward),
the wall time on the GPUs the stage is configured to use, and the cost at a price per GPU-hour.

FLOPs become seconds at a model FLOPs utilisation (MFU): a share of the GPU's dense bf16 peak. Reading a prompt
(prefill) keeps a GPU busy, writing a token at a time (decode) does not, so they get different MFUs. Where
`bench/gpu.py` measured them on a GPU (bench/results/gpu.json: the hf annotator reading prompts, LoRA-DPO training),
the measured MFUs replace the assumed ones and the output says which is which. These are estimates of the order of
a figure. Where a previous run of this config recorded a stage's throughput in its
manifest, with the same models, the measured figure replaces the estimate and the output says which is which.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from politune.config import TINY_MODEL, RunConfig
from politune.storage import Manifest, exists, join

CHARS_PER_TOKEN = 4  # English text in the Llama 3 / Mistral tokenizers, roughly
CHAT_OVERHEAD_TOKENS = 10  # a chat template's role headers and special tokens, a prompt
MFU_PREFILL = 0.45  # prompt reading (and training) on vLLM / TRL: compute bound; assumed
MFU_DECODE = 0.15  # batched generation: bound by memory bandwidth, a few tokens a weight read; assumed
BENCH_JSON = Path(__file__).resolve().parents[1] / "bench" / "results" / "gpu.json"  # bench/gpu.py's, in a checkout
INSTRUCTION_TOKENS = 40  # what the synthesizer's instruction step writes, about
JSON_SCORES_TOKENS = 20  # annotate's generate mode: {"ideology": 3, "relevance": 8, "quality": 6}


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float  # dense peak


GPUS = {"h100": Gpu("H100 SXM", 989.0), "h200": Gpu("H200 SXM", 989.0), "a100": Gpu("A100 SXM", 312.0),
        "l40s": Gpu("L40S", 362.0), "l4": Gpu("L4", 121.0)}


@dataclass(frozen=True)
class Mfus:
    """The MFUs FLOPs become seconds at, and where each came from ("assumed", or what measured it)."""

    prefill: float = MFU_PREFILL
    decode: float = MFU_DECODE
    train: float = MFU_PREFILL
    sources: tuple[tuple[str, str], ...] = (("prefill", "assumed"), ("decode", "assumed"), ("train", "assumed"))

    def source(self, kind: str) -> str:
        return dict(self.sources)[kind]


def measured_mfus(path: Path | None = BENCH_JSON) -> Mfus:
    """The MFUs bench/gpu.py measured on a GPU with the 8B shape (its JSON at `path`): the hf annotator's prompt
    reading for prefill, LoRA-DPO under Ray Train (plain TRL without it) for training, each as achieved FLOP/s over
    the measured GPU's dense bf16 peak (its matmul ceiling when the GPU is not one of GPUS). Decode stays assumed.
    Without such a file (or with a CPU run's), the assumed ones."""
    if path is None or not path.is_file():
        return Mfus()
    bench = json.loads(path.read_text())
    if bench.get("size") != "8b" or "cpu" in str(bench.get("device", "")).lower() or "annotate" not in bench:
        return Mfus()
    device = str(bench["device"])
    peak = next((g.bf16_tflops for key, g in GPUS.items() if key in device.lower()), bench["ceiling_tflops"])
    train = bench["train"].get("ray_train") or bench["train"]["plain_trl"]
    where = f"measured by bench/gpu.py on {device}, {bench['date']}"
    return Mfus(prefill=bench["annotate"]["tflops"] / peak, train=train["tflops"] / peak,
                sources=(("prefill", where), ("decode", "assumed"), ("train", where)))

# parameters of the models the presets name (from their configs); others: "<N>B" in the name, or a local folder
KNOWN_PARAMS = {"meta-llama/Meta-Llama-3-70B-Instruct": 70.6e9, "meta-llama/Meta-Llama-3-8B-Instruct": 8.03e9,
                "mistralai/Mistral-7B-Instruct-v0.2": 7.24e9}


@dataclass
class StagePlan:
    stage: str
    model: str
    tokens_in: float
    tokens_out: float
    gpus: int  # the stage's GPUs at once, as configured
    gpu_hours: float
    wall_hours: float
    basis: str  # "estimate" or "measured: …"
    note: str = ""

    def cost(self, price_per_gpu_hour: float) -> float:
        return self.gpu_hours * price_per_gpu_hour


def model_params(ref: str, cfg: RunConfig) -> float:
    """A model's parameter count: known, read from a local folder's safetensors headers, or "<N>B" in its name."""
    if ref in KNOWN_PARAMS:
        return KNOWN_PARAMS[ref]
    folder = Path(cfg.tiny_model.out if ref == TINY_MODEL else ref).expanduser()
    if folder.is_dir() and list(folder.glob("*.safetensors")):
        return float(sum(_safetensors_numel(p) for p in folder.glob("*.safetensors")))
    match = re.search(r"(\d+(?:\.\d+)?)[bB]\b", ref)
    if match:
        return float(match.group(1)) * 1e9
    raise ValueError(f"cannot tell how many parameters {ref} has: name a model with its size (…-8B…) or a local "
                     "folder with safetensors weights")


def _safetensors_numel(path: Path) -> int:
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def prompt_tokens(messages: list[dict[str, str]]) -> float:
    return sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN + CHAT_OVERHEAD_TOKENS


def gpu_hours(params: float, tokens_in: float, tokens_out: float, gpu: Gpu, train: bool = False,
              mfus: Mfus = Mfus()) -> float:
    peak = gpu.bf16_tflops * 1e12
    if train:
        return 6 * params * tokens_in / (peak * mfus.train) / 3600
    return (2 * params * tokens_in / (peak * mfus.prefill) + 2 * params * tokens_out / (peak * mfus.decode)) / 3600


def plan_study(cfg: RunConfig, posts: int, gpu: Gpu, post_tokens: float = 60.0,
               selected_share: float | None = None, ray_data_llm_ratio: float = 1.0, mfus: Mfus = Mfus(),
               ) -> tuple[list[StagePlan], list[str]]:
    """Per stage, the plan for `posts` posts of `post_tokens` tokens each, on `gpu`s; and notes on what it rests on
    (a previous run's manifest that could not be read). `ray_data_llm_ratio`: the stage's docs/s through
    ray.data.llm ÷ vllm.LLM's in one process (bench/annotate.py --engine vllm); the estimates of the stages that
    run vLLM through ray.data.llm are divided by it. `mfus`: measured_mfus() where bench/gpu.py measured them."""
    if not 0 < ray_data_llm_ratio <= 1.5:
        raise ValueError(f"--ray-data-llm-ratio {ray_data_llm_ratio}: expected a ratio above 0 (about 1)")
    from politune.contracts.annotator.prompts import JSON_SCHEMA, SCALES, generate_messages, scale_messages
    from politune.contracts.pair_prompts import answer_conversations, instruction_messages

    post = "x" * int(post_tokens * CHARS_PER_TOKEN)
    measured = _measured(cfg)
    notes = [measured.pop("_unreadable")] if "_unreadable" in measured else []
    share = selected_share if selected_share is not None else _selected_share(cfg, measured)
    measured.pop("_selected", None)
    plans = []

    a = cfg.annotate
    if a.mode == "logprob":
        a_in, a_out = posts * sum(prompt_tokens(scale_messages(post, s)) for s in SCALES), posts * len(SCALES)
    else:
        a_in, a_out = posts * prompt_tokens(generate_messages(post)), posts * JSON_SCORES_TOKENS
    a_gpus = a.concurrency * a.tensor_parallel_size * a.pipeline_parallel_size if a.engine == "vllm" else 0
    plans.append(_stage_plan("annotate", a.model, cfg, gpu, mfus, a_in, a_out, a_gpus, measured, posts,
                             "documents_per_s", note=f"{a.mode} mode, {len(SCALES)} scales" if a.mode == "logprob"
                             else f"generate mode, {len(JSON_SCHEMA['properties'])} scores as JSON"))

    selected = posts * share
    s = cfg.synthesize
    instruction = "x" * INSTRUCTION_TOKENS * CHARS_PER_TOKEN
    answers = answer_conversations(instruction, "left", post, s.chosen_from)
    s_in = selected * (prompt_tokens(instruction_messages(post)) + sum(prompt_tokens(m) for m in answers.values()))
    s_out = selected * (INSTRUCTION_TOKENS + len(answers) * s.max_new_tokens)
    if s.consistency_check:  # the annotator reads chosen and rejected on the ideology scale
        s_in += selected * 2 * (prompt_tokens(scale_messages("x" * s.max_new_tokens * CHARS_PER_TOKEN, "ideology")))
    s_gpus = s.concurrency * s.tensor_parallel_size * s.pipeline_parallel_size if s.engine == "vllm" else 0
    plans.append(_stage_plan("synthesize", s.model, cfg, gpu, mfus, s_in, s_out, s_gpus, measured, selected,
                             "pairs_per_s", note=f"{selected:,.0f} selected posts ({share:.0%} of the posts)"))

    t = cfg.train
    pairs = selected * (1 - s.eval_share)
    pair_tokens = 2 * min(t.max_length, INSTRUCTION_TOKENS + CHAT_OVERHEAD_TOKENS + s.max_new_tokens)
    adapters = len(t.sides) + len(t.mixtures)  # a mixture trains on about a side's number of pairs
    t_tokens = adapters * pairs * t.num_epochs * pair_tokens
    t_gpus = int(t.num_workers * t.gpus_per_worker) if t.use_gpu else 0
    plans.append(_stage_plan("train", t.base_model, cfg, gpu, mfus, t_tokens, 0, t_gpus, measured, None, "",
                             train=True, note=f"{adapters} adapter(s), {pairs:,.0f} pairs a side, "
                                              f"{t.num_epochs:g} epoch(s)"))

    plans.append(_evaluate_plan(cfg, gpu, mfus, measured))
    if ray_data_llm_ratio != 1.0:
        for p in plans:
            through_ray_data_llm = (p.stage == "annotate" and a.engine == "vllm") or \
                (p.stage == "synthesize" and s.engine == "vllm")
            if through_ray_data_llm and p.basis == "estimate":
                p.gpu_hours /= ray_data_llm_ratio
                p.wall_hours /= ray_data_llm_ratio
                p.basis = f"estimate / {ray_data_llm_ratio:g} (ray.data.llm ÷ vllm.LLM)"
    return plans, notes


def _stage_plan(stage: str, model: str, cfg: RunConfig, gpu: Gpu, mfus: Mfus, tokens_in: float, tokens_out: float,
                gpus: int, measured: dict[str, Any], items: float | None, rate_key: str, train: bool = False,
                note: str = "") -> StagePlan:
    hours = gpu_hours(model_params(model, cfg), tokens_in, tokens_out, gpu, train, mfus)
    wall = hours / gpus if gpus else hours
    basis = "estimate"
    record = measured.get(stage)
    if record and items and record["figures"].get(rate_key) and model in record.get("models", {}):
        wall = items / record["figures"][rate_key] / 3600
        hours = wall * gpus
        basis = f"measured: {record['figures'][rate_key]:,.1f} {rate_key.replace('_per_s', '')}/s " \
                f"on {record['started_at'][:10]}"
    if not gpus:
        note = (note + "; " if note else "") + "configured without GPUs: the figures are for one GPU"
    return StagePlan(stage, model, tokens_in, tokens_out, gpus, hours, wall, basis, note)


CAPABILITY_REQUEST_TOKENS = 120  # a harness document and one choice, prompt tokens (standard tasks run 50-400)


def _evaluate_plan(cfg: RunConfig, gpu: Gpu, mfus: Mfus, measured: dict[str, Any]) -> StagePlan:
    from politune.contracts.compass.instruments import load_instrument, load_probes

    e, s = cfg.evaluate, cfg.serve
    items = 0
    for name in e.instruments:
        try:
            items += len(load_instrument(name, e.pct_path).items)
        except (OSError, ValueError):
            items += 62  # the Political Compass test's propositions, when its file is not at hand
    adapters = len(cfg.train.sides) + len(cfg.train.mixtures)
    copies = len([s for s in e.adapter_scales if s != 1])
    models = 1 + adapters * (1 + (4 if e.checkpoints == "all" else 0) + copies)  # checkpoints: about 4 saves
    question = 40 + CHAT_OVERHEAD_TOKENS
    asked = models * items * e.phrasings             # (model, proposition, wording) triples
    free = asked * e.samples                         # free-text answers of a mode that writes one
    # forced choice: each of the four options scored in each of the two option orders (prompt tokens only)
    forced = 2 * 4 * question
    tokens_in = tokens_out = 0.0
    questions = 0
    if "logprob" in e.modes:
        tokens_in += asked * forced
        questions += 2 * asked
    for mode in ("generate", "generate_forced", "explain"):
        if mode in e.modes:
            tokens_in += free * question
            tokens_out += free * e.max_tokens
            questions += free
    if "explain" in e.modes:  # the forced choice after the model's own answer, in both orders
        tokens_in += free * 2 * 4 * (question + e.max_tokens)
        questions += 2 * free
    judged_modes = len({"generate", "generate_forced"} & set(e.modes))
    judged = judged_modes * free * e.max_tokens
    if e.probes:
        probes = models * len(load_probes()) * e.samples
        tokens_in += probes * question
        tokens_out += probes * e.probe_max_tokens
        judged += probes * e.probe_max_tokens
        questions += probes
    if e.issues:  # the issue set: three writing requests an issue, each text read by the judge
        texts = models * e.issues * 3 * e.samples
        tokens_in += texts * question
        tokens_out += texts * e.probe_max_tokens
        judged += texts * e.probe_max_tokens
        questions += 2 * texts
    tokens_in += judged  # the judge reads each free-text answer (generate, probes, issues), writes a label or score
    questions += judged_modes * free + (probes if e.probes else 0)
    capability = ""
    if e.capability.tasks:  # lm-evaluation-harness: a log-likelihood request a document and choice, a model
        from politune.evaluate.capability import requests_per_model

        try:
            per_model = requests_per_model(e.capability.tasks, e.capability.limit)
        except (ImportError, ValueError) as err:
            capability = f"; capability pass not counted: {err}"
        else:
            tokens_in += models * per_model * CAPABILITY_REQUEST_TOKENS
            capability = (f"; capability: {models * per_model:,} log-likelihood requests ({per_model:,} a model, "
                          f"{', '.join(e.capability.tasks)})")
    gpus = s.max_replicas * s.tensor_parallel_size * s.pipeline_parallel_size if s.backend == "vllm" else 0
    return _stage_plan("evaluate", s.base_model, cfg, gpu, mfus, tokens_in, tokens_out, gpus, measured, None, "",
                       note=f"{models} models x {items} propositions x {e.phrasings} wording(s), forced choice in "
                       f"both option orders: {questions:,} questions with the judge's{capability}")


def _measured(cfg: RunConfig) -> dict[str, Any]:
    """A previous run of this config, if its manifest can be read: its stage records (`stages`) and, under
    "_selected", its selection's record."""
    uri = join(cfg.run_uri, "manifest.json")
    try:
        if not exists(uri):
            return {}
        manifest = Manifest(cfg.run_uri)
    except OSError as err:  # the storage is not reachable from here: plan from the estimates alone
        return {"_unreadable": f"{uri} could not be read ({str(err).split(';')[0]}): every figure is an estimate"}
    return {**manifest.data.get("stages", {}), "_selected": manifest.artifact("selected")}


def _selected_share(cfg: RunConfig, measured: dict[str, Any]) -> float:
    """The share of posts select keeps: a previous run's, else the quantile rule's, else a stated 10%."""
    selected = measured.get("_selected")
    if selected and selected["counts"].get("documents"):
        return sum(selected["counts"]["kept"].values()) / selected["counts"]["documents"]
    if cfg.select.method == "quantile":
        return 2 * cfg.select.side_share
    return 0.10
