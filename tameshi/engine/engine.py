"""The engine: requests in, token steps out. Owns the scheduler, the KV block pool and the runner.

`add_request` / `step` / `abort` are the whole interface; `stream` and `generate_batch` are
conveniences for the synchronous Python API. Not thread-safe: `AsyncEngine` gives it one thread.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tameshi.engine.block_manager import BlockManager
from tameshi.engine.paged_cache import PagedKVCache, kv_bytes_per_token
from tameshi.engine.runner import ModelRunner
from tameshi.engine.sampler import make_generator
from tameshi.engine.scheduler import ScheduledBatch, Scheduler, SchedulerConfig
from tameshi.engine.sequence import Sequence, StepOutput
from tameshi.errors import (
    InvalidRequestError,
    ModelOutputError,
    PromptTooLongError,
    TensorParallelError,
    UnsupportedModelError,
)
from tameshi.model.llama import LlamaForCausalLM
from tameshi.sampling_params import SamplingParams
from tameshi.tokenizer import Tokenizer

log = logging.getLogger("tameshi")
_NAN_LOGITS = (
    "the model's logits came out NaN: its weights may be corrupt, or its activations overflow in this "
    "dtype (try --dtype bfloat16 or float32)"
)


@dataclass(frozen=True)
class EngineConfig:
    max_model_len: int | None = None  # None: the model's context length
    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    num_kv_blocks: int | None = None  # a fixed pool; None: sized from memory as below
    cpu_kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.9  # of the GPU's memory, model included, the engine may use
    enable_prefix_caching: bool = True
    # decode steps replayed as CUDA graphs (fp16/bf16 on CUDA); under tensor parallel every rank
    # replays its own, the NCCL all-reduces captured inside
    cuda_graphs: bool = True
    # Every sequence's outputs computed as its solo run computes them, bit for bit, whatever it is
    # batched with: matmuls with kernels and sums that do not depend on the row count
    # (LlamaForCausalLM.set_batch_invariant), prompts chunked only at fixed boundaries
    # (SchedulerConfig.fixed_chunks), no prefix cache (a hit would move the boundaries). Costs speed
    # at small batches and in prefill. A preempted sequence is recomputed by prefill, which sums
    # differently from the decodes it replaces: give the pool room enough not to preempt.
    batch_invariant: bool = False


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_free: int
    kv_blocks_total: int
    block_size: int
    prefix_cache_hit_rate: float  # prompt tokens served from the prefix cache / prompt tokens admitted
    preemptions: int


@dataclass
class StepTimes:
    """Wall time spent in steps (forward and sampling; each ends on the sampled ids reaching the
    host), split into pure decode steps and steps that carry prompt tokens (prefill chunks, with any
    decodes batched beside them). Where batched throughput goes: `tameshi bench` reads it."""

    decode_steps: int = 0
    decode_s: float = 0.0
    decode_rows: int = 0  # sequences summed over decode steps: / decode_steps is the mean batch
    prefill_steps: int = 0
    prefill_s: float = 0.0
    prefill_tokens: int = 0  # prompt tokens computed in those steps

    def add(self, batch: ScheduledBatch, seconds: float) -> None:
        prompt = sum(
            max(0, min(seq.prompt_len - seq.num_computed_tokens, n))
            for seq, n in zip(batch.seqs, batch.num_tokens, strict=True)
        )
        if prompt:
            self.prefill_steps += 1
            self.prefill_s += seconds
            self.prefill_tokens += prompt
        else:
            self.decode_steps += 1
            self.decode_s += seconds
            self.decode_rows += len(batch)


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
        self.config = config = config or EngineConfig()
        if config.batch_invariant and model.tp is not None:
            raise UnsupportedModelError("batch-invariant mode does not combine with tensor parallel yet")
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        context = min(config.max_model_len or model.config.context_length, model.config.context_length)
        num_blocks = self._pool_blocks(context)
        # A sequence must always fit the pool alone, or preemption could never make room for it.
        self.max_model_len = min(context, num_blocks * config.block_size)
        # rank_config: under tensor parallel this rank's KV heads only (else the model's config)
        self.cache = PagedKVCache(model.rank_config, num_blocks, config.block_size, self.device, self.dtype)
        if model.tp is not None:  # the followers' pools mirror this one, slot for slot
            model.tp.send(("cache", num_blocks, config.block_size))
        self.cache.batch_invariant = config.batch_invariant
        prefix_caching = config.enable_prefix_caching and not config.batch_invariant
        self.blocks = BlockManager(num_blocks, config.block_size, prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens, config.batch_invariant),
            self.blocks,
        )
        self.runner = ModelRunner(model, self.cache, self._decode_graphs(), config.batch_invariant)
        self._ids = itertools.count()
        self._failures: list[tuple[int, Exception]] = []
        self.step_times = StepTimes()
        gib = num_blocks * config.block_size * kv_bytes_per_token(model.rank_config, self.dtype) / 2**30
        log.info(
            "KV cache: %d blocks x %d tokens = %d tokens (%.2f GiB) on %s",
            num_blocks, config.block_size, num_blocks * config.block_size, gib, self.device,
        )  # fmt: skip

    def _decode_graphs(self):
        # fp32 stays on the eager PyTorch path (the exact reference); dynamic RoPE reads positions on
        # the host, which a graph cannot.
        c = self.config
        if not c.cuda_graphs or self.device.type != "cuda" or self.dtype == torch.float32:
            return None
        if self.model.config.rope.type == "dynamic":
            return None
        return self.make_decode_graphs()

    def make_decode_graphs(self):
        """DecodeGraphs for this engine's model and pool (captured at their first step); under tensor
        parallel, released before the process group closes."""
        from tameshi.engine.cuda_graphs import DecodeGraphs

        graphs = DecodeGraphs(self.model, self.cache, self.config.max_num_seqs, self.max_model_len)
        if self.model.tp is not None:
            self.model.tp.before_close.append(graphs.release)
        return graphs

    def _pool_blocks(self, context: int) -> int:
        c = self.config
        if c.num_kv_blocks is not None:
            return c.num_kv_blocks
        per_block = c.block_size * kv_bytes_per_token(self.model.rank_config, self.dtype)
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = free - (1 - c.gpu_memory_utilization) * total
        else:
            budget = c.cpu_kv_cache_gib * 2**30
        # More than max_num_seqs full contexts could never be used.
        most = c.max_num_seqs * -(-context // c.block_size)
        blocks = min(int(budget // per_block), most)
        if blocks < 1:
            raise InvalidRequestError(f"no memory left for even one KV block ({per_block / 2**20:.1f} MiB)")
        return blocks

    # -- requests --------------------------------------------------------------------------------
    def check_prompt(self, prompt_ids: list[int]) -> None:
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

    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Queue a request (params resolved); a bad one raises here and touches nothing else."""
        self.check_prompt(prompt_ids)
        seq = Sequence(next(self._ids), list(prompt_ids), params, self.tokenizer, self.max_model_len)
        if not params.greedy:
            seq.generator = make_generator(params.seed, self.device)
        self.scheduler.add(seq)
        return seq.seq_id

    def abort(self, seq_id: int) -> None:
        self.scheduler.abort(seq_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[tuple[int, StepOutput]]:
        """One forward and sampling over the scheduled batch. A request whose forward or sampling
        raises is failed alone (see `take_failures`); the others go on."""
        batch = self.scheduler.schedule()
        if not batch:
            return []
        start = time.perf_counter()
        try:
            sampled = self.runner.run(batch)
        except TensorParallelError:
            raise  # the model is broken, not a request: retrying one by one cannot help
        except Exception as exc:
            batch, sampled = self._run_one_by_one(batch, exc)
        self.step_times.add(batch, time.perf_counter() - start)
        for seq, n in zip(batch.seqs, batch.num_tokens, strict=True):
            seq.num_computed_tokens += n
            self.blocks.commit(seq)
        outputs = []
        for seq, token, logprob in sampled:
            if token < 0:  # ModelRunner.run: its logits held a NaN, and so may its K/V
                self.blocks.forget(seq)
                self._fail(seq, ModelOutputError(_NAN_LOGITS))
                continue
            outputs.append((seq.seq_id, seq.append(token, logprob)))
            if seq.finished:
                self.scheduler.finish(seq)
        return outputs

    def _run_one_by_one(self, batch: ScheduledBatch, exc: Exception) -> tuple[ScheduledBatch, list]:
        """The batch's step raised: run its sequences one at a time, so that a request that breaks
        the forward or the sampler fails alone and the others keep their work. If every one fails
        alone too, the fault is the engine's, not a request's: the step's error is raised."""
        kept, sampled, failed = ScheduledBatch(), [], []
        if len(batch) == 1:
            failed.append((batch.seqs[0], exc))
        else:
            for seq, n in zip(batch.seqs, batch.num_tokens, strict=True):
                try:
                    sampled += self.runner.run(ScheduledBatch([seq], [n]))
                except Exception as solo_exc:
                    failed.append((seq, solo_exc))
                    continue
                kept.seqs.append(seq)
                kept.num_tokens.append(n)
            if not kept.seqs:
                raise exc
        for seq, error in failed:
            self._fail(seq, error)
        return kept, sampled

    def _fail(self, seq: Sequence, error: Exception) -> None:
        """Fail one request alone (take_failures hands it its error) and free its KV blocks. NaN logits
        are the model's, said to the requester in full: logged below warning (a terminal shows it once)."""
        level = logging.INFO if isinstance(error, ModelOutputError) else logging.ERROR
        log.log(
            level,
            "request %d failed in a step (%s: %s); the others go on",
            seq.seq_id,
            type(error).__name__,
            error,
        )
        self._failures.append((seq.seq_id, error))
        self.scheduler.abort(seq.seq_id)

    def take_failures(self) -> list[tuple[int, Exception]]:
        """Requests that failed in a step since the last call, with their errors (they are aborted)."""
        failures, self._failures = self._failures, []
        return failures

    def stats(self) -> EngineStats:
        b = self.blocks
        rate = b.prefix_hit_tokens / b.prefix_queried_tokens if b.prefix_queried_tokens else 0.0
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting),
            kv_blocks_used=b.num_used_blocks,
            kv_blocks_free=b.num_free_blocks,
            kv_blocks_total=len(b.blocks),
            block_size=b.block_size,
            prefix_cache_hit_rate=rate,
            preemptions=self.scheduler.num_preemptions,
        )

    # -- synchronous conveniences ----------------------------------------------------------------
    def generate_batch(
        self, requests: list[tuple[list[int], SamplingParams]]
    ) -> Iterator[tuple[int, StepOutput]]:
        """Run requests together; yield (index in `requests`, output) as steps complete."""
        if self.has_unfinished():
            raise RuntimeError("the engine is busy; concurrent callers go through AsyncEngine")
        index = {}
        try:
            for i, (ids, params) in enumerate(requests):
                index[self.add_request(ids, params)] = i
            while self.has_unfinished():
                for seq_id, out in self.step():
                    yield index[seq_id], out
                for _, error in self.take_failures():
                    raise error
        finally:
            for seq_id in index:  # the caller stopped early (or a request was bad): free everything
                self.abort(seq_id)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[StepOutput]:
        for _, out in self.generate_batch([(prompt_ids, params)]):
            yield out
