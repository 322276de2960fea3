"""The generation loop: prompt ids + SamplingParams -> a stream of StepOutputs.

This first engine runs one sequence at a time over a contiguous KV cache; the batching engine
(scheduler, paged blocks) keeps the same `stream` interface.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tameshi.engine.kv_cache import ContiguousKVCache
from tameshi.engine.sampler import Sampler, make_generator
from tameshi.engine.sequence import Sequence, StepOutput
from tameshi.errors import InvalidRequestError, PromptTooLongError
from tameshi.model.llama import LlamaForCausalLM
from tameshi.sampling_params import SamplingParams
from tameshi.tokenizer import Tokenizer


@dataclass(frozen=True)
class EngineConfig:
    max_model_len: int | None = None  # None: the model's context length
    prefill_chunk: int = 2048  # long prompts are prefilled in pieces to bound activation memory


class Engine:
    def __init__(
        self,
        model: LlamaForCausalLM,
        tokenizer: Tokenizer,
        generation_config: dict,
        config: EngineConfig | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.config = config or EngineConfig()
        context = model.config.context_length
        self.max_model_len = min(self.config.max_model_len or context, context)
        self.sampler = Sampler()
        self._ids = itertools.count()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty")
        vocab = self.model.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise InvalidRequestError(f"prompt token ids must lie in [0, {vocab})")
        if len(prompt_ids) >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_ids)} tokens, but the model's context window is "
                f"{self.max_model_len} tokens (with room for at least one new token)"
            )

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[StepOutput]:
        """Generate for one prompt; `params` must be resolved. Yields after every new token."""
        self.check_prompt(prompt_ids, params)
        seq = Sequence(next(self._ids), prompt_ids, params, self.tokenizer, self.max_model_len)
        capacity = min(self.max_model_len, len(prompt_ids) + params.max_new_tokens)
        cache = ContiguousKVCache(self.model.config, capacity, self.device, self.dtype)
        history = torch.tensor(prompt_ids, dtype=torch.long, device=self.device)
        generator = None if params.greedy else make_generator(params.seed, self.device)
        pending = list(prompt_ids)
        while not seq.finished:
            token = self._step(cache, pending, history, seq, generator)
            history = torch.cat([history, token])
            out = seq.append(int(token.item()))
            pending = out.token_ids
            yield out

    @torch.inference_mode()
    def _step(self, cache, pending, history, seq, generator) -> torch.Tensor:
        start = cache.length
        hidden = None
        for lo in range(0, len(pending), self.config.prefill_chunk):
            chunk = pending[lo : lo + self.config.prefill_chunk]
            ids = torch.tensor(chunk, dtype=torch.long, device=self.device)
            positions = torch.arange(start + lo, start + lo + len(chunk), device=self.device)
            cache.begin_step(len(chunk))
            hidden = self.model(ids, positions, cache)
            cache.end_step()
        logits = self.model.compute_logits(hidden[-1:])
        return self.sampler(
            logits,
            [history],
            [seq.params],
            [generator],
            n_generated=[seq.n_generated],
            eos_ids=[tuple(seq.stop_ids)],
        )
