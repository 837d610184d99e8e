"""The OpenAI API as the hf back end speaks it: requests validated with pydantic, responses built from the
`openai` package's own types, so a client cannot tell this server from ray.serve.llm's or OpenAI's.

Only what the server does is accepted: an unknown field, or a feature this server does not have, is a 400 that
names the field, rather than a request quietly answered some other way. `stream: true` is answered as OpenAI
streams: server-sent events of chunks (`StreamChunks`), then `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage, ChatCompletionTokenLogprob
from openai.types.chat.chat_completion import Choice as ChatChoice
from openai.types.chat.chat_completion import ChoiceLogprobs
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from openai.types.chat.chat_completion_chunk import ChoiceLogprobs as ChunkLogprobs
from openai.types.chat.chat_completion_token_logprob import TopLogprob
from openai.types.completion_choice import Logprobs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from politune.serve.guard import APIError

MAX_TOP_LOGPROBS = 20


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 non-empty stop strings")
        return stops

    @model_validator(mode="after")
    def _options_need_stream(self) -> _Request:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed with stream: true")
        return self


TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(_Request):
    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(
        ..., description="A prompt, a list of prompts (one choice each), or the same as token ids: a list of ints "
        "is one prompt, a list of such lists many.")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt: str | list) -> str | list:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("at least one prompt")
        return prompt

    def prompts(self) -> list[tuple[str, str | list[int]]]:
        """Each prompt with the field that holds it (`prompt`, `prompt.2`): text, or token ids."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [("prompt", self.prompt)]
        return [(f"prompt.{i}", p) for i, p in enumerate(self.prompt)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


def parse_request(body: bytes, kind: type[_Request]) -> _Request:
    """A request body as `kind`; APIError 400 naming the field (or the JSON problem) otherwise."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    where = not_text(data)
    if where is not None:
        raise APIError(400, f"{where}: not valid Unicode text (a lone surrogate such as \\ud800); send UTF-8 text",
                       param=where.split(".")[0])
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "(body)"
        if first["type"] == "extra_forbidden":
            message = f"{path}: unknown or unsupported field"
        else:
            message = f"{path}: {first['msg'].removeprefix('Value error, ')}"
        more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
        raise APIError(400, message + more, param=path.split(".")[0]) from None


def not_text(value: object, path: str = "") -> str | None:
    """The path (`messages.0.content`) of the first string in a parsed JSON value that is not valid Unicode text,
    or None. JSON's \\u escapes can spell a lone surrogate, which no tokenizer can encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(body)"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        here = f"{path}.{key}" if path else str(key)
        found = not_text(key, path or "(body)") if isinstance(key, str) else None
        found = found or not_text(item, here)
        if found is not None:
            return found
    return None


@dataclass
class GenerationRequest:
    """One prompt's work for a model replica (a completion's prompt, or a chat's messages)."""

    request_id: str
    adapter: str | None           # a registry name, or None for the base
    prompt: str | None = None
    prompt_ids: list[int] | None = None  # a prompt sent as token ids
    where: str = "prompt"         # the field that holds it, for errors: prompt, prompt.2, messages
    messages: list[dict] | None = None
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None   # top alternatives a token; 0 = the chosen token's only; None = none
    echo: bool = False
    arrived: float = 0.0          # set by the model replica: time.perf_counter() when it got the request


@dataclass
class GeneratedChoice:
    text: str
    finish_reason: str
    tokens: list[str] = field(default_factory=list)          # with logprobs: every token of `text`
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = field(default_factory=list)
    completion_tokens: int = 0


@dataclass
class Generation:
    """A replica's answer to one GenerationRequest: its n choices, or why it was refused."""

    choices: list[GeneratedChoice] = field(default_factory=list)
    prompt_tokens: int = 0
    error: tuple[int, str, str | None] | None = None  # (status, message, param)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def completion_response(model: str, generations: list[Generation], logprobs: bool) -> Completion:
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for gen in generations:
        prompt_tokens += gen.prompt_tokens
        for c in gen.choices:
            completion_tokens += c.completion_tokens
            choices.append(CompletionChoice(index=len(choices), text=c.text, finish_reason=c.finish_reason,
                                            logprobs=_completion_logprobs(c) if logprobs else None))
    return Completion(id=_new_id("cmpl"), object="text_completion", created=int(time.time()), model=model,
                      choices=choices, usage=CompletionUsage(prompt_tokens=prompt_tokens,
                                                             completion_tokens=completion_tokens,
                                                             total_tokens=prompt_tokens + completion_tokens))


def _chat_logprobs(c: GeneratedChoice) -> list[ChatCompletionTokenLogprob]:
    return [ChatCompletionTokenLogprob(
        token=tok, logprob=lp if lp is not None else 0.0, bytes=list(tok.encode()),
        top_logprobs=[TopLogprob(token=t, logprob=v, bytes=list(t.encode()))
                      for t, v in (c.top_logprobs[k] if c.top_logprobs else {}).items()])
        for k, (tok, lp) in enumerate(zip(c.tokens, c.token_logprobs, strict=True))]


def _completion_logprobs(c: GeneratedChoice) -> Logprobs:
    # model_construct: with echo the first token has no log-probability, which the API sends as null (as OpenAI
    # and vLLM do) but the package's type, List[float], does not admit
    return Logprobs.model_construct(tokens=c.tokens, token_logprobs=c.token_logprobs, top_logprobs=c.top_logprobs,
                                    text_offset=c.text_offset)


def chat_response(model: str, gen: Generation, logprobs: bool) -> ChatCompletion:
    choices, completion_tokens = [], 0
    for i, c in enumerate(gen.choices):
        completion_tokens += c.completion_tokens
        choices.append(ChatChoice(
            index=i, finish_reason=c.finish_reason,
            message=ChatCompletionMessage(role="assistant", content=c.text),
            logprobs=ChoiceLogprobs(content=_chat_logprobs(c)) if logprobs else None))
    return ChatCompletion(id=_new_id("chatcmpl"), object="chat.completion", created=int(time.time()), model=model,
                          choices=choices, usage=CompletionUsage(prompt_tokens=gen.prompt_tokens,
                                                                 completion_tokens=completion_tokens,
                                                                 total_tokens=gen.prompt_tokens + completion_tokens))


class StreamChunks:
    """One streamed answer's chunks in OpenAI's shapes (`text_completion` chunks for /completions,
    `chat.completion.chunk` for chat), each an SSE `data:` line. Keeps what each choice has been sent, so the
    last chunk of a choice carries the rest of its final text."""

    def __init__(self, model: str, chat: bool, logprobs: bool) -> None:
        self.model, self.chat, self.logprobs = model, chat, logprobs
        self.id, self.created = _new_id("chatcmpl" if chat else "cmpl"), int(time.time())
        self.sent: dict[int, str] = {}

    @staticmethod
    def event(data: dict | str) -> str:
        return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"

    def _chunk(self, choices: list, usage: CompletionUsage | None = None) -> str:
        if self.chat:
            chunk: Any = ChatCompletionChunk(id=self.id, object="chat.completion.chunk", created=self.created,
                                             model=self.model, choices=choices, usage=usage)
        else:  # model_construct: a choice's finish_reason is null until its last chunk, which the type does not admit
            chunk = Completion.model_construct(id=self.id, object="text_completion", created=self.created,
                                               model=self.model, choices=choices, usage=usage)
        return self.event(chunk.model_dump(exclude_unset=not self.chat, exclude_none=False))

    def _choice(self, index: int, text: str | None, finish_reason: str | None = None, choice: Any = None) -> Any:
        if self.chat:
            delta = ChoiceDelta(role="assistant", content="") if text is None else ChoiceDelta(content=text)
            return ChunkChoice(index=index, delta=delta, finish_reason=finish_reason,
                               logprobs=ChunkLogprobs(content=_chat_logprobs(choice))
                               if choice is not None and self.logprobs else None)
        return CompletionChoice.model_construct(
            index=index, text=text or "", finish_reason=finish_reason,
            logprobs=_completion_logprobs(choice) if choice is not None and self.logprobs else None)

    def start(self, choices: int) -> list[str]:
        """Chat's first chunks: each choice's role."""
        return [self._chunk([self._choice(i, None)]) for i in range(choices)] if self.chat else []

    def text(self, index: int, delta: str) -> str:
        self.sent[index] = self.sent.get(index, "") + delta
        return self._chunk([self._choice(index, delta)])

    def finish(self, generations: list[Generation], usage: bool) -> list[str]:
        """Each choice's last chunk (the rest of its text, why it ended, its logprobs when asked), the usage
        chunk when asked, and [DONE]."""
        out, index, prompt_tokens, completion_tokens = [], 0, 0, 0
        for gen in generations:
            prompt_tokens += gen.prompt_tokens
            for c in gen.choices:
                completion_tokens += c.completion_tokens
                rest = c.text[len(self.sent.get(index, "")):]  # what was sent is a prefix of it (streamed_text)
                out.append(self._chunk([self._choice(index, rest, c.finish_reason, c)]))
                index += 1
        if usage:
            out.append(self._chunk([], CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                                       total_tokens=prompt_tokens + completion_tokens)))
        return [*out, self.event("[DONE]")]

    def error(self, err: APIError) -> str:
        """An error after the stream began: OpenAI's error object as an event, and no [DONE] after it."""
        return self.event(err.body())
