"""The `code` check: run the function a model wrote against the probe's tests, in a sandbox.

The answer's Python goes into a fresh temporary folder with `sandbox_harness.py`, which runs it under
`python -I -S` (no site-packages, no environment variables, cwd not on sys.path), an empty environment,
resource limits (memory, CPU seconds, open files, file size, processes) and an audit hook that refuses
network, subprocesses, ctypes and files outside the folder. A wall-clock timeout kills the whole process
group. The folder is deleted afterwards. This keeps honest mistakes and loops contained; it is not a
boundary against code written to escape (that would need a container or a VM).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tameshi.eval.checks.base import Answer, Verdict, clip

HARNESS = Path(__file__).with_name("sandbox_harness.py")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_TOP_LEVEL_CODE = re.compile(r"^(def |class |import |from |@|async def |[A-Za-z_][A-Za-z0-9_]* *=)")


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0
    memory_bytes: int = 1 << 30
    open_files: int = 64
    file_bytes: int = 1 << 20
    processes: int = 0  # no fork (root ignores RLIMIT_NPROC; the audit hook refuses it anyway)

    def rlimits(self) -> dict[str, int]:
        return {
            "RLIMIT_AS": self.memory_bytes,
            "RLIMIT_CPU": int(self.timeout_s) + 1,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_FSIZE": self.file_bytes,
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_CORE": 0,
        }


@dataclass
class RunResult:
    defined: bool = False
    module_error: str | None = None
    tests: list[tuple[str, bool, str | None]] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    timed_out: bool = False
    crashed: str | None = None  # the child died without reporting (limits, signals)

    @property
    def passed(self) -> bool:
        return (
            self.defined
            and not self.blocked
            and not self.timed_out
            and not self.crashed
            and bool(self.tests)
            and all(ok for _, ok, _ in self.tests)
        )


def extract_code(text: str, function: str) -> str | None:
    """The Python source that defines `function`: the first fenced block with `def function`, else
    the unfenced lines from that `def` on, up to the first line of prose."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    for body in blocks:
        if re.search(rf"^\s*(async\s+)?def\s+{re.escape(function)}\s*\(", body, re.M):
            return body
    m = re.search(rf"^[ \t]*def\s+{re.escape(function)}\s*\(", text, re.M)
    if not m:
        return None
    lines = []
    for line in text[m.start() :].splitlines():
        if lines and line.strip() and not line[0].isspace() and not _TOP_LEVEL_CODE.match(line):
            break  # back to prose
        lines.append(line)
    return "\n".join(lines)


def run_solution(source: str, function: str, tests: list[str], limits: Limits | None = None) -> RunResult:
    limits = limits or Limits()
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="tameshi-code-") as tmp:
        box = Path(tmp) / "box"  # the solution's folder; its stdout lands beside it, not inside
        box.mkdir()
        (box / "solution.py").write_text(source, encoding="utf-8")
        (box / "harness.py").write_text(HARNESS.read_text(encoding="utf-8"), encoding="utf-8")
        argv = [sys.executable, "-I", "-S", "-X", "utf8", "harness.py"]
        argv += [json.dumps(limits.rlimits()), json.dumps(function), json.dumps(tests)]
        with open(Path(tmp) / "stdout", "w+b") as out:
            proc = subprocess.Popen(
                argv,
                cwd=box,
                env={},
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a timeout kills everything it made
            )
            try:
                proc.communicate(input=(nonce + "\n").encode(), timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return RunResult(timed_out=True)
            out.seek(0)
            output = out.read(2 << 20).decode("utf-8", "replace")
    for line in output.splitlines():
        if line.startswith(nonce):
            data = json.loads(line[len(nonce) :])
            tests_run = [(t, ok, err) for t, ok, err in data["tests"]]
            return RunResult(data["defined"], data["module_error"], tests_run, data["blocked"])
    code = proc.returncode
    why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    tail = clip(output.strip().splitlines()[-1], 100) if output.strip() else "no output"
    return RunResult(crashed=f"{why}: {tail}")


def check_code(answer: Answer, args: dict[str, Any]) -> Verdict:
    """`function`: the name to define; `tests`: Python statements (asserts) run after the answer's
    code; `timeout`: seconds (default 5)."""
    function, tests = args["function"], list(args["tests"])
    source = extract_code(answer.text, function)
    if source is None:
        return Verdict("code", False, f"no Python code defining {function}() found")
    result = run_solution(source, function, tests, Limits(timeout_s=float(args.get("timeout", 5))))
    return Verdict("code", result.passed, describe(result, function))


def describe(r: RunResult, function: str) -> str:
    if r.timed_out:
        return "timed out; killed"
    if r.crashed:
        return f"crashed ({r.crashed})"
    if r.blocked:
        return f"sandbox refused: {'; '.join(clip(b, 90) for b in r.blocked[:3])}"
    if not r.defined:
        return f"{function}() not defined" + (f" ({r.module_error})" if r.module_error else "")
    passed = sum(ok for _, ok, _ in r.tests)
    text = f"{passed}/{len(r.tests)} tests passed"
    failed = [f"{clip(t, 50)} → {err}" for t, ok, err in r.tests if not ok]
    if failed:
        text += "; failed: " + "; ".join(failed[:2])
    if r.module_error:
        text += f"; module-level code raised {r.module_error}"
    return text


def validate_code(args: dict[str, Any]) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(args.get("function", ""))):
        raise ValueError("code: 'function' must be a Python identifier")
    tests = args.get("tests")
    if not (isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests)):
        raise ValueError("code: 'tests' must be a non-empty list of Python statements")
    for t in tests:
        try:
            compile(t, "test", "exec")
        except SyntaxError as e:
            raise ValueError(f"code: test {t!r} is not valid Python: {e.msg}") from None
