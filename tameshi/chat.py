"""Chat templates: render messages to a prompt the way HF's apply_chat_template does, safely.

A chat template from model metadata is untrusted code (llama-cpp-python CVE-2024-34359 was SSTI -> RCE
through a GGUF template), so it runs in Jinja's ImmutableSandboxedEnvironment, as in transformers, plus
limits HF lacks: a render deadline, an output cap, and size checks on the operations that can blow up
memory ('x' * 10**9, '%0999999999d', str.center(10**9)) before they allocate.
"""

from __future__ import annotations

import contextvars
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.filters
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tameshi.errors import InvalidRequestError, TemplateError
from tameshi.tokenizer import Tokenizer

MAX_OUTPUT_CHARS = 4_000_000
RENDER_TIMEOUT_S = 5.0

# formats.md §1.5, verbatim from deepseek-ai/deepseek-llm-7b-chat's tokenizer_config.json.
DEEPSEEK_LLM_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
DEEPSEEK_BOS_TOKEN = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("chat_template_deadline", default=math.inf)
# A 7-digit width in a %-format or {}-format spec asks for more than MAX_OUTPUT_CHARS of padding.
_HUGE_PERCENT_WIDTH = re.compile(r"%[^a-zA-Z%]*\d{7,}")
_HUGE_BRACE_WIDTH = re.compile(r"\{[^{}]*:[^{}]*\d{7,}")


class _TemplateLimitError(Exception):
    """Raised inside rendering when a limit is hit; reported as TemplateError."""


def _check_deadline() -> None:
    if time.monotonic() > _deadline.get():
        raise _TemplateLimitError(f"rendering took longer than {RENDER_TIMEOUT_S:g} s")


def _check_size(value: Any) -> Any:
    if isinstance(value, str | list | tuple | dict) and len(value) > MAX_OUTPUT_CHARS:
        raise _TemplateLimitError(f"a value grew past {MAX_OUTPUT_CHARS} items")
    return value


def _check_percent_format(fmt: str) -> None:
    if _HUGE_PERCENT_WIDTH.search(fmt):
        raise _TemplateLimitError("a format width is larger than the output cap")


def _check_int_args(args: tuple, kwargs: dict) -> None:
    # Catches str.center/ljust/zfill/expandtabs and the center/indent filters asking for gigabytes.
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and abs(arg) > MAX_OUTPUT_CHARS:
            raise _TemplateLimitError(f"argument {arg} is larger than the output cap")


class _GuardedSandbox(ImmutableSandboxedEnvironment):
    """The HF sandbox, with the deadline and size checks threaded through every call, lookup and operator."""

    # Intercepted operators are also never constant-folded at compile time, which would bypass the checks.
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        _check_int_args(args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        # Jinja swaps every str.format / format_map it hands out for this wrapper; refuse huge widths there.
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and _HUGE_BRACE_WIDTH.search(value.__self__):

            def refuse(*args: Any, **kwargs: Any) -> str:
                raise _TemplateLimitError("a format width is larger than the output cap")

            return refuse
        return wrapped

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_deadline()
        return _check_size(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_deadline()
        return _check_size(super().getitem(obj, argument))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_deadline()
        if _binop_result_size(operator, left, right) > MAX_OUTPUT_CHARS:
            raise _TemplateLimitError(f"the result of {operator!r} would be larger than the output cap")
        if operator == "%" and isinstance(left, str):
            _check_percent_format(left)
        return _check_size(super().call_binop(context, operator, left, right))


def _binop_result_size(operator: str, left: Any, right: Any) -> float:
    """Length (or, for an int power, bytes) of the result, estimated before it is computed."""
    sequence = str | list | tuple
    if operator == "*" and isinstance(right, sequence) and isinstance(left, int):
        left, right = right, left
    if operator == "*" and isinstance(left, sequence) and isinstance(right, int):
        return len(left) * right
    if operator == "+" and isinstance(left, sequence) and isinstance(right, sequence):
        return len(left) + len(right)
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
        return right * math.log2(abs(left)) / 8
    return 0


class _GenerationTag(jinja2.ext.Extension):
    """HF's `{% generation %}...{% endgeneration %}` (marks assistant spans for training); here it just renders."""

    tags = {"generation"}  # noqa: RUF012 (Jinja's Extension API)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # HF replaces Jinja's tojson, which HTML-escapes '<' '>' '&' and would corrupt prompts.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _guard_filter(fn: Any) -> Any:
    # Filters are called directly by compiled templates, not through the sandbox's call().
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_int_args(args[1:], kwargs)
        if fn is jinja2.filters.do_format and args and isinstance(args[0], str):
            _check_percent_format(args[0])
        return fn(*args, **kwargs)

    return guarded


@lru_cache(maxsize=1)
def _environment() -> _GuardedSandbox:
    env = _GuardedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.filters["center"] = _guard_filter(jinja2.filters.do_center)
    env.filters["indent"] = _guard_filter(jinja2.filters.do_indent)
    env.filters["format"] = _guard_filter(jinja2.filters.do_format)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _plain(value: Any) -> Any:
    # Templates see only JSON-shaped data: rich objects carry methods the sandbox does not know to block.
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    raise InvalidRequestError(f"chat messages may hold only JSON values, not {type(value).__name__}.")


def _normalize_message(message: Any) -> dict:
    if not isinstance(message, dict) or "role" not in message:
        raise InvalidRequestError("each chat message must be an object with a 'role'.")
    # HF drops None-valued keys: templates handle a missing key but print a literal "None".
    message = {k: _plain(v) for k, v in message.items() if v is not None}
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise InvalidRequestError(
                    "message content parts must be text parts; this runtime is text-only."
                )
            texts.append(part["text"])
        # Same join as vLLM's "string" content format, so prompts match a vLLM server's.
        message["content"] = "\n".join(texts)
    return message


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # jinja text
    origin: str  # where it came from, for `tameshi info`: "tokenizer_config.json", "GGUF metadata", ...

    def render(
        self,
        messages: list[dict],
        bos_token: str | None,
        eos_token: str | None,
        add_generation_prompt: bool = True,
        extra: dict | None = None,
    ) -> str:
        try:
            template = _compile(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"The chat template from {self.origin} does not parse: {e}.") from e
        # As in HF: a missing special token is left undefined (renders ""), not passed as None ("None").
        specials = {"bos_token": bos_token, "eos_token": eos_token}
        variables = {"tools": None, "documents": None} | {k: v for k, v in specials.items() if v is not None}
        variables.update(_plain(extra or {}))
        variables["messages"] = [_normalize_message(m) for m in messages]
        variables["add_generation_prompt"] = add_generation_prompt

        token = _deadline.set(time.monotonic() + RENDER_TIMEOUT_S)
        pieces: list[str] = []
        size = 0
        try:
            # generate() streams, so a runaway loop is stopped at the cap instead of filling memory first.
            for piece in template.generate(variables):
                size += len(piece)
                if size > MAX_OUTPUT_CHARS:
                    raise _TemplateLimitError(f"the output passed {MAX_OUTPUT_CHARS} characters")
                pieces.append(piece)
        except jinja2.TemplateError as e:
            raise TemplateError(f"The chat template from {self.origin} raised an error: {e.message}") from e
        except (_TemplateLimitError, RecursionError, MemoryError) as e:
            raise TemplateError(f"The chat template from {self.origin} was stopped: {e}.") from e
        except Exception as e:  # anything else thrown from template code is the template's (or input's) fault
            raise TemplateError(
                f"The chat template from {self.origin} failed: {type(e).__name__}: {e}."
            ) from e
        finally:
            _deadline.reset(token)
        return "".join(pieces)


def resolve_chat_template(tokenizer: Tokenizer, origin: str = "tokenizer_config.json") -> ChatTemplate:
    if tokenizer.chat_template is not None:
        return ChatTemplate(source=tokenizer.chat_template, origin=origin)
    if tokenizer.bos_token == DEEPSEEK_BOS_TOKEN:
        # DeepSeek-LLM base and some re-uploads ship no template; the chat models' one is known exactly.
        return ChatTemplate(source=DEEPSEEK_LLM_TEMPLATE, origin="built-in deepseek-llm")
    raise TemplateError("This model ships no chat template; use generate() with raw text or pass a template.")


def encode_chat(
    tokenizer: Tokenizer, template: ChatTemplate, messages: list[dict], add_generation_prompt: bool = True
) -> list[int]:
    text = template.render(messages, tokenizer.bos_token, tokenizer.eos_token, add_generation_prompt)
    # The template writes BOS itself; encoding with special tokens would add a second one (formats.md §1.5).
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    if tokenizer.add_bos_token and bos is not None:
        while ids[:2] == [bos, bos]:
            ids = ids[1:]
        if ids[:1] != [bos]:
            ids = [bos, *ids]
    return ids
