"""The `tameshi chat` loop: history, slash commands, Ctrl-C that stops an answer but not the session."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from rich.console import Console

from tameshi.api import LLM
from tameshi.errors import TameshiError
from tameshi.sampling_params import SAMPLING_KNOBS, SamplingParams

HELP = (
    "/reset  forget the conversation   /system TEXT  set the system prompt (empty: none)\n"
    "/set PARAM VALUE  change sampling (e.g. /set temperature 0.2; /set stop A|B; none: unset)\n"
    "/params  show them   /exit"
)
_BOOLS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


class ChatSession:
    def __init__(self, llm: LLM, params: SamplingParams, system: str | None, console: Console) -> None:
        self.llm = llm
        self.params = llm.sampling_params(params)
        self.system = system
        self.history: list[dict[str, Any]] = []
        self.console = console

    def run(self) -> None:
        kv = self.llm.engine.stats()
        self.console.print(
            f"[dim]chatting with {self.llm.loaded.source.path.name} (context {self.llm.engine.max_model_len}, "
            f"KV cache {kv.kv_blocks_total * kv.block_size:,} tokens); /help for commands[/]"
        )
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                self.console.print()
                return
            except KeyboardInterrupt:
                self.console.print("\n[dim](/exit or Ctrl-D to quit)[/]")
                continue
            if not line.strip():
                continue
            if line.startswith("/"):
                if not self.command(line.strip()):
                    return
                continue
            self.answer(line)

    def command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.history.clear()
            self.console.print("[dim]conversation cleared[/]")
        elif name == "/system":
            self.system = arg.strip() or None
            self.console.print(f"[dim]system prompt {'set' if self.system else 'removed'}[/]")
        elif name == "/set":
            self.set_param(arg)
        elif name == "/params":
            self.console.print(self.params)
        else:
            self.console.print(HELP, markup=False)
        return True

    def set_param(self, arg: str) -> None:
        key, _, raw = arg.strip().partition(" ")
        fields = {f.name: f for f in dataclasses.fields(SamplingParams) if f.repr}
        if key not in fields:
            self.console.print(f"[red]unknown parameter {key!r}[/]; one of: {', '.join(fields)}")
            return
        changes = {}
        try:
            changes[key] = _parse(raw.strip(), str(fields[key].type))
            # a sampling knob asks for sampling (as the command-line flags do), temperature 0 excepted
            if key in SAMPLING_KNOBS and changes[key] not in (None, 0) and not self.params.do_sample:
                changes["do_sample"] = True
            self.params = dataclasses.replace(self.params, **changes)
        except (ValueError, TameshiError) as e:
            self.console.print(f"[red]{e}[/]")
            return
        for name in changes:
            self.console.print(f"[dim]{name} = {getattr(self.params, name)!r}[/]")

    def answer(self, text: str) -> None:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        messages.append({"role": "user", "content": text})
        parts, reason = [], None
        try:
            for chunk in self.llm.chat(messages, self.params, stream=True):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                parts.append(chunk.text)
                reason = chunk.finish_reason or reason
        except KeyboardInterrupt:
            reason = "interrupted"
        except TameshiError as e:
            self.console.print(f"\n[red]error:[/] {e}")
            return
        sys.stdout.write("\n")
        if reason == "length":
            self.console.print("[yellow]⚠ cut at the length limit (/set max_new_tokens N for more)[/]")
        elif reason == "interrupted":
            self.console.print("[dim](stopped)[/]")
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(parts)}]


def _parse(raw: str, kind: str) -> Any:
    """A /set value for a field of annotation `kind` (SamplingParams' own, as a string): none unsets it;
    booleans take true/false/yes/no/on/off/1/0; stop lists are split at |."""
    if raw.lower() in ("none", ""):
        return None
    if kind.startswith("bool"):
        if raw.lower() not in _BOOLS:
            raise ValueError(f"cannot read {raw!r} as true or false")
        return _BOOLS[raw.lower()]
    if kind.startswith("tuple"):
        parts = tuple(raw.split("|"))
        return tuple(_parse(part, "int") for part in parts) if "int" in kind else parts
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    raise ValueError(f"cannot read {raw!r} as a number")
