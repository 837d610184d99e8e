"""The synthesis prompts, in one place and versioned: every Preference row carries the version.

Bump PROMPT_VERSION whenever a word below changes.

A selected post becomes one pair in two steps, as in the paper:
1. the synthesizer writes an instruction the post answers, naming neither the post nor a side;
2. it answers that instruction twice: in the post's ideology (chosen, grounded in the post) and in
   the opposite one (rejected).
"""

from __future__ import annotations

PROMPT_VERSION = "synthesize-v1"
SIDES = ("left", "right")
OPPOSITE = {"left": "right", "right": "left"}
VOICE = {
    "left": "a progressive on the political left in the United States (a Democrat)",
    "right": "a conservative on the political right in the United States (a Republican)",
}

SYSTEM = "You help build a dataset for a study of political language models. Follow the format asked for."


def instruction_messages(post: str) -> list[dict[str, str]]:
    """Step 1: an instruction this post answers."""
    return _conversation(
        f"Post:\n{post}\n\n"
        "Write one instruction that this post would answer: a question, or a task such as "
        '"Explain how …" or "Express your opinion on …". Do not mention the post, its author or any '
        "political side. Reply with the instruction only.")


def chosen_messages(instruction: str, side: str, post: str) -> list[dict[str, str]]:
    """Step 2a: the on-side answer, grounded in the post."""
    return _conversation(
        f"Instruction:\n{instruction}\n\nA post that shows the view to take:\n{post}\n\n"
        f"Answer the instruction as {VOICE[side]} would, in the spirit of the post, in one paragraph. "
        "Reply with the answer only.")


def rejected_messages(instruction: str, side: str) -> list[dict[str, str]]:
    """Step 2b: the answer from the opposite side."""
    return _conversation(
        f"Instruction:\n{instruction}\n\n"
        f"Answer the instruction as {VOICE[OPPOSITE[side]]} would, in one paragraph. Reply with the answer only.")


def answer_conversations(instruction: str, side: str, post: str, chosen_from: str) -> dict[str, list[dict[str, str]]]:
    """The answers step 2 asks for, by role: rejected always, chosen unless the post itself is chosen."""
    answers = {"rejected": rejected_messages(instruction, side)}
    if chosen_from == "generated":
        answers["chosen"] = chosen_messages(instruction, side, post)
    return answers


def _conversation(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
