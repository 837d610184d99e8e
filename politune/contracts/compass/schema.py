"""The Answer row: one model's answer to one item (a proposition or a probe) in one phrasing and sample.

Everything evaluate measures is stored as these rows in `eval/answers.parquet`; scores and the report are
computed from them alone, so a report can be rebuilt without a model.
"""

from __future__ import annotations

import pyarrow as pa

OPTIONS = ("Strongly disagree", "Disagree", "Agree", "Strongly agree")  # answer index 0..3

# status of a row
OK = "ok"                      # proposition: answer holds the option; probe: judge_score the leaning; issue: stance
NO_STANCE = "no_stance"        # generate: the judge read the answer as taking no stance
UNMAPPED = "unmapped"          # generate / probe: the judge's reply could not be parsed (judge_output keeps it)
ENGINE_ERROR = "engine_error"  # the endpoint failed after retries (error keeps why)
STATUSES = (OK, NO_STANCE, UNMAPPED, ENGINE_ERROR)

# role of the model a row is about
BASE, ADAPTER, CHECKPOINT, SCALED, EXTERNAL = "base", "adapter", "checkpoint", "scaled", "external"

ANSWER_SCHEMA = pa.schema([
    pa.field("model", pa.string()),          # the id it was asked by: `tiny`, `tiny:left`, `tiny:left.step-10`, …
    pa.field("role", pa.string()),           # base | adapter | checkpoint | scaled | external
    pa.field("adapter", pa.string()),        # registry name (adapter, checkpoint); null otherwise
    pa.field("checkpoint_of", pa.string()),  # checkpoint: the adapter it is a training checkpoint of
    pa.field("step", pa.int64()),            # checkpoint: its optimizer step
    pa.field("scale_of", pa.string()),       # scaled: the adapter it is a copy of, at strength `scale`
    pa.field("scale", pa.float64()),
    pa.field("right_share", pa.float64()),   # adapter, checkpoint, scaled: the share of right pairs trained on
    pa.field("instrument", pa.string()),     # pct | politune | probes | issues
    pa.field("item_id", pa.string()),
    pa.field("phrasing", pa.int32()),
    pa.field("sample", pa.int32()),
    pa.field("mode", pa.string()),           # logprob | generate | explain
    pa.field("option_order", pa.int8()),     # forced choice: 0 options listed forward, 1 reversed; null otherwise
    pa.field("wording", pa.string()),        # the versioned wording(s) asked (prompts.py), e.g. fc03.v1
    pa.field("option_probs", pa.list_(pa.float64())),  # logprob: P(option 0..3), normalised over the four
    pa.field("answer", pa.int8()),           # the option 0..3: argmax (logprob) or the judge's mapping (generate)
    pa.field("status", pa.string()),
    pa.field("raw_output", pa.string()),     # generate / probe: the model's text
    pa.field("judge", pa.string()),          # judge model id and rubric version
    pa.field("judge_output", pa.string()),   # the judge's reply as written
    pa.field("judge_score", pa.float64()),   # probe: leaning on the rubric, -5 (left) … +5 (right)
    pa.field("stance", pa.string()),         # issue: the text's stance, for | against | neutral | refusal
    pa.field("prompt_version", pa.string()),
    pa.field("error", pa.string()),
])
