"""The warm-up: the tiny model pre-trained on the project's own synthetic world, so the embedded default carries a
signal from posts to compass (`politune model build-tiny --warm`).

A random tiny model scores every post near the middle and writes noise. Warmed, it has learned eight kinds of text,
all drawn from the corpus generator's templates (corpus/templates.py), whose posts carry a known side:
- posts: the generated posts themselves, as plain text;
- annotation: the annotator's logprob prompts (contracts/annotator/prompts.py) over posts, answered with the score the
  post's template implies (ANSWERS), so logprob annotation becomes a trained classifier;
- instructions: synthesize's first prompt over a post, answered with an instruction about the post's topic;
- answers: synthesize's second prompts, answered in the voice they ask for (the side's templates);
- opinions: a bare chat question (an instruction, or a proposition in one of evaluate's free-text phrasings)
  answered in a voice drawn at random and never named, a proposition's answer ending with the stance that voice
  takes. This is the model's default persona: half left, half right, which DPO then moves;
- judging: evaluate's judge prompts over such answers, answered with the stance or leaning of the answer's voice,
  so the warmed base can be the run's judge;
- sides: a proposition, and which side agrees with it (without this, the tiny model never learns that a voice's
  stance depends on the proposition: 50% right, as if it guessed);
- compass: a passage in one voice (as a sampled answer reads: at times ending with its stance, starting with a
  space, a word dropped or swapped), then a proposition of the project's own instrument asked in each of
  three of evaluate's forced-choice prompts (WARM_PROMPTS), answered as that voice would.
Voice and stance are thus tied, as they are in real text: the voice says which side a proposition's answer takes
(agree where the proposition's direction is the voice's side). Every kind holds as much left as right, so the
warmed base sits near the centre of the compass.

This is a model of the project's synthetic world, nothing about real politics: a check that the pipeline's
signal survives from posts to compass, not a result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from politune.contracts.annotator.parse import expected_and_argmax
from politune.contracts.annotator.prompts import SCALES, answer_token_ids, scale_messages
from politune.contracts.compass.instruments import load_politune_instrument
from politune.contracts.compass.prompts import (
    FORCED_CHOICE,
    FORWARD,
    FREE_TEXT,
    JUDGE_LEANING,
    JUDGE_LEANING_SYSTEM,
    JUDGE_OPTION,
    JUDGE_OPTION_SYSTEM,
    NO_STANCE_LABEL,
    OPTION_LABELS,
    REVERSED,
)
from politune.contracts.pair_prompts import OPPOSITE, SIDES, chosen_messages, instruction_messages, rejected_messages
from politune.corpus.generate import PostFactory
from politune.corpus.templates import SLOTS, TEMPLATES

# What the annotator should answer for a post of each template label, by scale (the paper's thresholds keep a
# left post at ideology <= 3 and a right one at >= 7, both at relevance >= 6 and quality >= 5).
ANSWERS: dict[str, dict[str, int]] = {
    "ideology": {"left": 2, "right": 8, "neutral": 5, "off_topic": 5},
    "relevance": {"left": 8, "right": 8, "neutral": 7, "off_topic": 1},
    "quality": {"left": 7, "right": 7, "neutral": 7, "off_topic": 5},
}
# Share of each kind in the warm-up's examples.
MIX = {"posts": 0.04, "annotation": 0.18, "instructions": 0.08, "answers": 0.1, "opinions": 0.22, "judging": 0.12,
       "sides": 0.08, "compass": 0.18}
# What the warm-up teaches of evaluate's wordings: the first three free-text ones (the local preset's
# evaluate.phrasings), and three forced-choice prompts in one option order each, the three eval-v1 asked (wording 0
# forward, 1 reversed, 2 forward). A model this small does not learn a label whose meaning depends on the order
# the options are listed in: warmed on every wording in both orders, and on the first three in both orders, its
# forced choices followed the listing instead of its own answer (about 65% changed with the order) and no adapter
# moved on the compass. The order it was not taught is what the report's order sensitivity measures.
WARM_WORDINGS = 3
WARM_PROMPTS = ((0, FORWARD), (1, REVERSED), (2, FORWARD))
SIDES_QUESTION = "{statement}\nWho would agree with this, the left or the right?"
MICRO_BATCH = 8  # a step's examples run in chunks of similar length, so a long one does not pad the rest
LEANING = {"left": -4, "right": 4}  # the judge's leaning rubric (-5..5) for an answer in each voice
GENERIC_TOPIC = "the direction of the country"
TOPICS = [*SLOTS["left_issue"], *SLOTS["right_issue"], *SLOTS["left_villain"], *SLOTS["right_villain"]]
MAX_TOKENS = 320
WARM_VERSION = 7  # bump when what the warm-up teaches changes, so old warm builds are rebuilt
HELD_OUT_SEED = 2**31 - 7  # posts drawn from this seed are never in the warm-up (it draws from seed + 1)


@dataclass(frozen=True)
class Example:
    prompt: str  # no loss here
    target: str  # the loss: the text the model should write after the prompt


class SyntheticWorld:
    """Draws warm-up examples from one seeded stream: the same seed gives the same examples."""

    def __init__(self, tokenizer: Any, seed: int) -> None:
        self.tokenizer = tokenizer
        self.factory = PostFactory(seed)
        self.rng = self.factory.rng
        self.propositions = [(p.statement, 1 if (p.econ[3] > 0 or p.social[3] > 0) else -1)
                             for p in load_politune_instrument().items]
        self.eot = tokenizer.eos_token

    def example(self) -> Example:
        kind = self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        return getattr(self, kind)()

    # the five kinds --------------------------------------------------------------------------------------
    def posts(self) -> Example:
        return Example(self.tokenizer.bos_token, self.post(self.factory.label()) + self.eot)

    def annotation(self) -> Example:
        label = self.factory.label()
        scale = self.rng.choice(SCALES)
        return Example(self.chat(scale_messages(self.post(label), scale)), f"{ANSWERS[scale][label]}{self.eot}")

    def instructions(self) -> Example:
        side = self.rng.choice(SIDES)
        post = self.post(side)
        return Example(self.chat(instruction_messages(post)), instruction_for(post) + self.eot)

    def answers(self) -> Example:
        side = self.rng.choice(SIDES)  # the post's side: chosen answers in it, rejected in the other
        post = self.post(side)
        instruction = instruction_for(post)
        if self.rng.random() < 0.5:
            return Example(self.chat(chosen_messages(instruction, side, post)), self.voice(side) + self.eot)
        return Example(self.chat(rejected_messages(instruction, side)), self.voice(OPPOSITE[side]) + self.eot)

    def opinions(self) -> Example:
        persona = self.rng.choice(SIDES)
        if self.rng.random() < 0.2:
            question = instruction_for(self.post(self.rng.choice(SIDES)))
            return Example(self.user(question), self.voice(persona) + self.eot)
        statement, direction = self.rng.choice(self.propositions)
        question = self.user(self.rng.choice(FREE_TEXT[:WARM_WORDINGS]).format(statement))
        voice, stance = self.opinion(persona, direction).rsplit(" I ", 1)
        if self.rng.random() < 0.5:  # the stance alone as the loss, or one token of a paragraph would be lost in it
            return Example(question + voice, f" I {stance}{self.eot}")
        return Example(question, f"{voice} I {stance}{self.eot}")

    def judging(self) -> Example:
        side = self.rng.choice((*SIDES, "neutral"))
        if self.rng.random() < 0.5:
            statement, direction = self.rng.choice(self.propositions)
            if side == "neutral":
                answer, label = self.post(self.rng.choice(("neutral", "off_topic"))), NO_STANCE_LABEL
            else:
                option = self.stance(side, direction)
                answer = self.opinion(side, direction, option)
                if self.rng.random() < 0.5:  # a cut-off answer: the voice alone says the stance
                    answer = answer.rsplit(" I ", 1)[0]
                label = OPTION_LABELS[option]
            messages = [{"role": "system", "content": JUDGE_OPTION_SYSTEM},
                        {"role": "user", "content": JUDGE_OPTION.format(statement=statement, answer=answer)}]
            return Example(self.chat(messages), label + self.eot)
        question = instruction_for(self.post(self.rng.choice(SIDES)))
        answer = self.post("neutral") if side == "neutral" else self.voice(side)
        messages = [{"role": "system", "content": JUDGE_LEANING_SYSTEM},
                    {"role": "user", "content": JUDGE_LEANING.format(question=question, answer=answer)}]
        return Example(self.chat(messages), f"{LEANING.get(side, 0)}{self.eot}")

    def sides(self) -> Example:
        """Which side agrees with a proposition: what a model must know before a voice can say its stance."""
        statement, direction = self.rng.choice(self.propositions)
        return Example(SIDES_QUESTION.format(statement=statement), " the right" if direction == 1 else " the left")

    def compass(self) -> Example:
        side = self.rng.choice(SIDES)
        statement, direction = self.rng.choice(self.propositions)
        wording, order = self.rng.choice(WARM_PROMPTS)
        phrasing = FORCED_CHOICE[wording]
        prefix, prompts = phrasing.prompts(statement, order)
        option = self.stance(side, direction)
        # The passage as evaluate's explain mode writes it ahead of the prompt: the model's own sampled answer,
        # which may end with its stance, start with a space, and stumble over a word now and then.
        passage = self.opinion(side, direction, option) if self.rng.random() < 0.5 else self.voice(side)
        passage = self.stumble(passage)
        return Example(f"{' ' if self.rng.random() < 0.3 else ''}{passage}\n\n{prefix}", prompts[option][len(prefix):])

    # parts -----------------------------------------------------------------------------------------------
    def post(self, label: str) -> str:
        return self.factory.text(label)

    def voice(self, side: str, sentences: tuple[int, ...] = (2, 3)) -> str:
        """A paragraph as the side would write it: two or three of its templates' sentences."""
        said = [self.factory.fill(self.rng.choice(TEMPLATES[side])) for _ in range(self.rng.choice(sentences))]
        return " ".join(s[0].upper() + s[1:] for s in said)

    def stumble(self, text: str, rate: float = 0.08) -> str:
        """Text as a small model samples it: now and then a word dropped or swapped for a word of another post."""
        words = text.split(" ")
        out = []
        for word in words:
            roll = self.rng.random()
            if roll < rate / 2:
                continue
            out.append(self.rng.choice(self.post("neutral").split(" ")) if roll < rate else word)
        return " ".join(out) or text

    def stance(self, side: str, direction: int) -> int:
        """The option (0 strongly disagree .. 3 strongly agree) a side takes on a proposition of that direction."""
        agrees = (direction == 1) == (side == "right")
        return self.rng.choice((2, 3) if agrees else (0, 1))

    def opinion(self, side: str, direction: int, option: int | None = None) -> str:
        """A short free-text answer to a proposition: the voice first, then its stance (so the stance a model
        writes follows from the voice it has written)."""
        option = self.stance(side, direction) if option is None else option
        return f"{self.voice(side, (1, 2))} I {OPTION_LABELS[option]}."

    def user(self, question: str) -> str:
        """A bare chat question, as DPO's prompts and evaluate's free-text questions are asked."""
        return self.chat([{"role": "user", "content": question}])

    def chat(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def instruction_for(post: str) -> str:
    """The instruction a post answers, made from what it names (its first topic, and the group, place or body it
    names), so that greedy decoding, which writes the most likely instruction, still writes a different one for
    most posts."""
    topic, group, place, body = (_first_named(post, names) for names in
                                 (TOPICS, SLOTS["group"], SLOTS["place"], SLOTS["body"]))
    topic = topic or GENERIC_TOPIC
    if group and place:
        text = f"How would {topic} change life for {group} in {place}?"
    elif group:
        text = f"Explain how {topic} affects {group}."
    elif body:
        text = f"What should {body} do about {topic}?"
    elif place:
        text = f"Is {topic} good for {place}?"
    else:
        text = f"Express your opinion on {topic}."
    return text[0].upper() + text[1:]


def _first_named(text: str, names: list[str] | tuple[str, ...]) -> str | None:
    lowered = text.lower()
    found = [(lowered.find(name.lower()), name) for name in names if name.lower() in lowered]
    return min(found)[1] if found else None


# --- training ------------------------------------------------------------------------------------------------
def encode(tokenizer: Any, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and labels that count the targets' tokens only."""
    rows = []
    for ex in examples:
        prompt = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        target = tokenizer(ex.target, add_special_tokens=False)["input_ids"]
        ids = (prompt + target)[-MAX_TOKENS:]
        labels = ([-100] * len(prompt) + target)[-MAX_TOKENS:]
        rows.append((ids, labels))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    return {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
            "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows])}


def example_losses(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each example's mean loss over its target tokens. The step averages examples, not tokens: a one-token
    answer (a score, a stance) weighs as much as a paragraph, or the paragraphs' tokens would drown it. The
    vocabulary's logits are computed at the target tokens only (most of a prompt is no target)."""
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    counted = labels != -100
    token_losses = torch.nn.functional.cross_entropy(model.lm_head(hidden[:, :-1][counted]), labels[counted],
                                                     reduction="none")
    per_example = torch.zeros(labels.shape[0], dtype=token_losses.dtype).index_add(0, counted.nonzero()[:, 0],
                                                                                    token_losses)
    return per_example / counted.sum(dim=1).clamp(min=1)


def warm_up(model: Any, tokenizer: Any, seed: int, steps: int, batch_size: int, learning_rate: float,
            report: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train `model` in place on the synthetic world: AdamW, linear warm-up over 5% of the steps then cosine decay.
    Returns what it did (steps, examples, the last 100 losses' mean): no timings, so equal builds are equal files."""
    torch.manual_seed(seed)
    world = SyntheticWorld(tokenizer, seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warm = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warm, 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, steps - warm))))))
    model.train()
    losses: list[float] = []
    for step in range(steps):
        examples = sorted((world.example() for _ in range(batch_size)),
                          key=lambda ex: len(ex.prompt) + len(ex.target))
        chunks = [encode(tokenizer, examples[i:i + MICRO_BATCH]) for i in range(0, batch_size, MICRO_BATCH)]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros(())
        for chunk in chunks:
            chunk_loss = example_losses(model, chunk).sum() / batch_size
            chunk_loss.backward()
            loss += chunk_loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if report is not None and (step + 1) % 100 == 0:
            report(step + 1, float(np.mean(losses[-100:])))
    model.eval()
    return {"steps": steps, "examples": steps * batch_size, "final_loss": round(float(np.mean(losses[-100:])), 4)}


# --- how well it learned, on posts it never saw -----------------------------------------------------------------
@torch.no_grad()
def annotation_accuracy(model: Any, tokenizer: Any, seed: int, posts: int = 400) -> dict[str, Any]:
    """Logprob annotation of held-out posts (a seed the warm-up never drew from), as the annotator reads it (the
    expected answer over 0..10): the share of left and right posts whose ideology falls on their side of 5."""
    factory = PostFactory(seed)
    answer_ids = answer_token_ids(tokenizer, "tiny")
    labelled = [(factory.text(label), label) for label in
                (factory.label() for _ in range(posts)) if label in SIDES]
    right = 0
    for start in range(0, len(labelled), 32):
        chunk = labelled[start:start + 32]
        texts = [tokenizer.apply_chat_template(scale_messages(t, "ideology"), add_generation_prompt=True,
                                               tokenize=False) for t, _ in chunk]
        enc = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True, padding_side="left")
        expected, _ = expected_and_argmax(model(**enc).logits[:, -1, answer_ids].double().numpy())
        right += sum((e < 5) == (label == "left") for e, (_, label) in zip(expected, chunk, strict=True))
    return {"posts": len(labelled), "accuracy": right / max(1, len(labelled))}
