"""A request's token ids and its text: detokenizing, stop strings, stop tokens and the finish reason."""

from __future__ import annotations

from dataclasses import dataclass

from tameshi.sampling_params import SamplingParams
from tameshi.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the most likely alternatives at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass
class StepOutput:
    """What one engine step added to one request."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (EOS, stop token or stop string) or "length"
    logprobs: list[TokenLogprob] | None = None  # one per token id, when the request asked for them


class Sequence:
    def __init__(
        self,
        seq_id: int,
        prompt_ids: list[int],
        params: SamplingParams,
        tokenizer: Tokenizer,
        max_model_len: int,
    ) -> None:
        self.seq_id = seq_id
        self.token_ids = list(prompt_ids)
        self.prompt_len = len(prompt_ids)
        self.params = params
        self.max_model_len = max_model_len
        eos = () if params.ignore_eos else tokenizer.eos_token_ids
        self.stop_ids = frozenset(eos) | frozenset(params.stop_token_ids)
        self.detok = IncrementalDetokenizer(
            tokenizer, skip_special_tokens=params.skip_special_tokens, prompt_ids=prompt_ids
        )
        # A stop string may be forming at the end of the text: hold that many characters back.
        self._hold = max((len(s) for s in params.stop), default=1) - 1
        self.text = ""  # decoded output, cut at a stop string once one is found
        self._released = 0
        self.finish_reason: str | None = None
        # scheduling state (the engine's, not the output's)
        self.block_table: list[int] = []
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_cached_tokens = 0  # of those, how many came from the prefix cache at admission
        self.block_hashes: list[int] = []  # chain hashes of the leading full blocks already committed
        self.generator = None  # per-request torch.Generator when seeded
        self.preempted = 0  # times its blocks were taken back (recomputed later)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def n_generated(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def append(self, token_id: int, logprob: TokenLogprob | None = None) -> StepOutput:
        """Add one sampled token; return the text it released and the finish reason if it ended the request."""
        self.token_ids.append(token_id)
        if token_id in self.stop_ids:
            self.finish_reason = "stop"  # the stop token's own text never reaches the output
            self.text += self._final_text()
            self._cut_at_stop_string()
        else:
            self.text += self.detok.push(token_id)
            if self._cut_at_stop_string():
                self.finish_reason = "stop"
            elif self.n_generated >= self.params.max_new_tokens or len(self.token_ids) >= self.max_model_len:
                self.text += self._final_text()
                self.finish_reason = "stop" if self._cut_at_stop_string() else "length"
        logprobs = None if logprob is None else [logprob]
        return StepOutput(self._release(), [token_id], self.finish_reason, logprobs)

    def _final_text(self) -> str:
        # A generation cut mid-character (length limit, or EOS after a stray byte) leaves bytes that are
        # no character at all; an answer never ends in "�".
        return self.detok.flush().rstrip("\ufffd")

    def _cut_at_stop_string(self) -> bool:
        if not self.params.stop:
            return False
        start = max(0, self._released - self._hold)
        hits = [i for i in (self.text.find(s, start) for s in self.params.stop) if i >= 0]
        if not hits:
            return False
        self.text = self.text[: min(hits)]
        return True

    def _release(self) -> str:
        end = len(self.text) if self.finished else max(self._released, len(self.text) - self._hold)
        out = self.text[self._released : end]
        self._released = end
        return out
