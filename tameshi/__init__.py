"""tameshi (試し, "a try"): load a new open chat LLM, chat with it, probe it and serve it."""

from tameshi.api import LLM, Completion, CompletionChunk
from tameshi.sampling_params import SamplingParams

__all__ = ["LLM", "Completion", "CompletionChunk", "SamplingParams"]
__version__ = "0.1.0"
