"""Typed errors. Each carries one clear sentence; the CLI prints it without a traceback."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (transport errors run to paragraphs), at most `limit` chars."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


class TameshiError(Exception):
    """Base of every error tameshi raises on purpose."""


class ModelNotFoundError(TameshiError):
    """The model path or hub id does not lead to a usable model."""


class CorruptCheckpointError(TameshiError):
    """A checkpoint file is truncated, malformed, or disagrees with its config."""


class UnsupportedModelError(TameshiError):
    """The checkpoint is readable but of an architecture or format tameshi does not run."""


class TemplateError(TameshiError):
    """A chat template failed to render (including raise_exception from inside the template)."""


class InvalidRequestError(TameshiError):
    """A request's parameters are out of range or inconsistent."""


class PromptTooLongError(InvalidRequestError):
    """The prompt does not fit the model's context window."""


class SuiteError(TameshiError):
    """A probe suite file is missing, unreadable or malformed (the message names file and probe)."""


class RunFileError(TameshiError):
    """An eval run file (JSONL) is missing or not one tameshi wrote."""


class JudgeError(TameshiError):
    """The judge endpoint or model could not be reached or gave no usable score."""


class TensorParallelError(TameshiError):
    """A rank of a tensor-parallel model died or a collective failed: the model cannot run any more."""


class ModelOutputError(TameshiError):
    """The model's logits for a request came out NaN: corrupt weights, or an overflow in this dtype.
    The request fails with this; the engine and the other requests go on."""
