"""The Python API: `LLM` loads a model once; `generate`, `chat` and `ask` run it.

from tameshi import LLM, SamplingParams
llm = LLM()                                   # the embedded default model
print(llm.ask("What is the capital of Japan?"))
for chunk in llm.ask("日本の首都は？", stream=True):
    print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tameshi.chat import encode_chat
from tameshi.engine.async_engine import AsyncEngine
from tameshi.engine.engine import Engine, EngineConfig
from tameshi.engine.sequence import StepOutput
from tameshi.errors import InvalidRequestError, TemplateError
from tameshi.loading.loader import LoadedModel, load_model
from tameshi.sampling_params import SamplingParams

Params = SamplingParams | dict[str, Any] | None
Prompt = str | list[int]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop", "length", or "error" (then `error` says why; nothing was generated)
    prompt_tokens: int
    error: str | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def __str__(self) -> str:
        return self.text


@dataclass
class CompletionChunk:
    text: str  # new text since the last chunk (may be empty)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # set on the last chunk only


class LLM:
    def __init__(
        self,
        model: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        progress: bool = True,
        engine_config: EngineConfig | None = None,
        quantize: str | None = None,
        tp: int = 1,
    ) -> None:
        """`tp` > 1: tensor parallel over that many processes (GPUs with NCCL; CPU with gloo).
        This process is rank 0 and starts the others itself; under torchrun every rank runs the same
        script, and on ranks other than 0 `LLM(...)` never returns: it follows rank 0's steps and
        exits the process when rank 0 closes."""
        self.loaded: LoadedModel = load_model(
            model, device=device, dtype=dtype, progress=progress, quantize=quantize, tp=tp
        )
        launch = self.loaded.launch
        if launch is not None and not launch.tp.is_leader:
            from tameshi.parallel.follower import follow

            follow(self.loaded.model)
            launch.tp.close()
            raise SystemExit(0)
        self.tokenizer = self.loaded.tokenizer
        try:
            self.engine = Engine(
                self.loaded.model, self.tokenizer, self.loaded.generation_config, engine_config
            )
        except BaseException:
            if launch is not None:  # the other ranks are following: stop them, or they wait forever
                launch.shutdown()
            raise
        self._async: AsyncEngine | None = None

    @property
    def async_engine(self) -> AsyncEngine:
        """The engine on its own thread, for many concurrent (asyncio or threaded) callers.

        Once started it owns the engine: the synchronous methods then go through it too.
        """
        if self._async is None:
            self._async = AsyncEngine(self.engine)
            self._async.start()
        return self._async

    def async_engine_for_this_thread(self) -> AsyncEngine:
        """The AsyncEngine not started: the caller runs it on this thread with `run_here()` and
        serves its consumers from others (`tameshi serve`: faster on CPU, see run_here)."""
        if self._async is not None:
            raise RuntimeError("the AsyncEngine already exists")
        self._async = AsyncEngine(self.engine)
        return self._async

    def close(self) -> None:
        """Stop the engine thread, if one was started, and the other tensor-parallel ranks, if any."""
        if self._async is not None:
            self._async.stop()
        if self.loaded.launch is not None:
            self.loaded.launch.shutdown()

    # -- parameters ---------------------------------------------------------------------------
    def sampling_params(self, params: Params = None) -> SamplingParams:
        """Fill unset fields from the model's generation_config.json, then transformers' defaults."""
        if params is None:
            params = SamplingParams()
        elif isinstance(params, dict):
            params = SamplingParams(**params)
        return params.resolve(self.loaded.generation_config)

    # -- raw text or ids, no template -----------------------------------------------------------
    def generate(
        self, prompts: Prompt | Sequence[Prompt], params: Params = None, stream: bool = False
    ) -> Completion | list[Completion] | Iterator[CompletionChunk]:
        """One prompt -> one Completion; a list -> a list, run batched, where a bad prompt gets
        finish_reason "error" and the others still run. `stream=True` takes one prompt."""
        single = isinstance(prompts, str) or (
            isinstance(prompts, list) and (not prompts or isinstance(prompts[0], int))
        )
        batch = [prompts] if single else list(prompts)
        ids = [self._encode_raw(p) for p in batch]
        if stream:
            if not single:
                raise ValueError("stream=True takes a single prompt")
            return self._stream(ids[0], params)
        if single:
            return self._complete(ids[0], params)
        return self._complete_batch(ids, params)

    def _encode_raw(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        return [int(t) for t in prompt]

    # -- chat -----------------------------------------------------------------------------------
    def chat(
        self, messages: list[dict[str, Any]], params: Params = None, stream: bool = False
    ) -> Completion | Iterator[CompletionChunk]:
        ids = self.encode_chat(messages)
        return self._stream(ids, params, chat=True) if stream else self._complete(ids, params, chat=True)

    def ask(
        self, text: str, params: Params = None, stream: bool = False, system: str | None = None
    ) -> Completion | Iterator[CompletionChunk]:
        """One user turn (optionally after a system prompt) through the chat template."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": text}
        ]
        return self.chat(messages, params, stream=stream)

    async def achat(
        self, messages: list[dict[str, Any]], params: Params = None
    ) -> AsyncIterator[CompletionChunk]:
        """Stream a chat answer in asyncio; many may run at once. Leaving early aborts the request."""
        ids = self.encode_chat(messages)
        resolved = self.sampling_params(params)
        self.engine.check_prompt(ids)
        started = False
        async for out in self.async_engine.generate(ids, resolved):
            text = out.text if started else out.text.lstrip()
            started = started or bool(text)
            yield CompletionChunk(text, out.token_ids, out.finish_reason)

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        template = self.loaded.chat_template
        if template is None:
            raise TemplateError("this model ships no chat template; use generate() with raw text instead")
        return encode_chat(self.tokenizer, template, messages, add_generation_prompt=True)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The exact prompt text the model sees for `messages` (special tokens shown)."""
        return self.tokenizer.decode(self.encode_chat(messages), skip_special_tokens=False)

    # -- running --------------------------------------------------------------------------------
    def _stream(self, ids: list[int], params: Params, chat: bool = False) -> Iterator[CompletionChunk]:
        resolved = self.sampling_params(params)
        self.engine.check_prompt(ids)  # fail now, not at the first next()
        return self._chunks(ids, resolved, chat)

    def _chunks(self, ids: list[int], params: SamplingParams, chat: bool) -> Iterator[CompletionChunk]:
        started = not chat
        outputs = self._async.stream_sync(ids, params) if self._async else self.engine.stream(ids, params)
        for out in outputs:
            text = out.text
            if not started:
                # Templates like DeepSeek's end in "Assistant:" and the model supplies the space.
                text = text.lstrip()
                started = bool(text)
            yield CompletionChunk(text, out.token_ids, out.finish_reason)

    def _run_batch(
        self, requests: list[tuple[list[int], SamplingParams]]
    ) -> Iterator[tuple[int, StepOutput]]:
        if self._async is None:
            return self.engine.generate_batch(requests)
        # the engine belongs to its thread now: one request after another through it
        return ((i, out) for i, (ids, p) in enumerate(requests) for out in self._async.stream_sync(ids, p))

    def _complete(self, ids: list[int], params: Params, chat: bool = False) -> Completion:
        self.engine.check_prompt(ids)  # a single prompt raises rather than returning an error
        return self._complete_batch([ids], params, chat)[0]

    def _complete_batch(
        self, prompts: list[list[int]], params: Params, chat: bool = False
    ) -> list[Completion]:
        """All prompts through the engine together (continuous batching), each with the same params."""
        resolved = self.sampling_params(params)
        text: list[list[str]] = [[] for _ in prompts]
        tokens: list[list[int]] = [[] for _ in prompts]
        reasons = ["length"] * len(prompts)
        errors: list[str | None] = [None] * len(prompts)
        runnable = []
        for i, p in enumerate(prompts):
            try:  # a bad prompt (too long, empty) fails alone; the others still run
                self.engine.check_prompt(p)
                runnable.append(i)
            except InvalidRequestError as e:
                errors[i], reasons[i] = str(e), "error"
        for j, out in self._run_batch([(prompts[i], resolved) for i in runnable]):
            i = runnable[j]
            text[i].append(out.text)
            tokens[i] += out.token_ids
            reasons[i] = out.finish_reason or reasons[i]
        done = []
        for i, p in enumerate(prompts):
            joined = "".join(text[i])
            body = joined.lstrip() if chat else joined
            done.append(Completion(body, tokens[i], reasons[i], len(p), errors[i]))
        return done
