"""Code probes (project check 3): the model's function runs against the tests in a child process, with a
timeout, and can touch neither the network nor files outside its temporary folder."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from tameshi.eval.checks import Answer, run_check
from tameshi.eval.checks.code_runner import Limits, extract_code, run_solution

PALINDROME_TESTS = [
    'assert is_palindrome("A man, a plan, a canal: Panama")',
    'assert not is_palindrome("hello")',
    'assert is_palindrome("")',
]
GOOD_EN = """Here is the function:

```python
import re

def is_palindrome(s: str) -> bool:
    cleaned = re.sub(r"[^a-z0-9]", "", s.lower())
    return cleaned == cleaned[::-1]
```

It removes everything but letters and digits first."""
GOOD_JA = """以下のように書けます。

def is_palindrome(s: str) -> bool:
    t = [c.lower() for c in s if c.isalnum()]
    return t == t[::-1]

この関数は、英数字だけを残して比較します。"""
WRONG_JA = """```python
def is_palindrome(s):
    return s == s[::-1]  # 大文字や空白を無視していない
```"""


def answer(text: str, lang: str = "en") -> Answer:
    return Answer(text=text, lang=lang, expect_lang=lang)


def check(source: str, tests: list[str], timeout: float = 5) -> tuple[bool, str]:
    text = f"```python\n{source}```"
    v = run_check("code", answer(text), {"function": "f", "tests": tests, "timeout": timeout})
    return v.passed, v.evidence


def test_right_and_wrong_solutions_in_both_languages() -> None:
    args = {"function": "is_palindrome", "tests": PALINDROME_TESTS}
    v = run_check("code", answer(GOOD_EN), args)
    assert v.passed and v.evidence == "3/3 tests passed", v.evidence
    v = run_check("code", answer(GOOD_JA, "ja"), args)  # unfenced code between Japanese prose
    assert v.passed, v.evidence
    v = run_check("code", answer(WRONG_JA, "ja"), args)
    assert not v.passed and "1/3 tests passed" not in v.evidence and "AssertionError" in v.evidence
    v = run_check("code", answer("I cannot write code."), args)
    assert not v.passed and "no Python code defining is_palindrome()" in v.evidence


def test_extract_code_stops_at_prose() -> None:
    src = extract_code(GOOD_JA, "is_palindrome")
    assert src is not None and src.startswith("def is_palindrome") and "この関数" not in src


def test_an_endless_loop_is_killed_at_the_timeout() -> None:
    t = time.monotonic()
    ok, why = check("def f():\n    while True:\n        pass\n", ["f()"], timeout=1)
    assert not ok and "timed out" in why
    assert time.monotonic() - t < 10


def test_no_network(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # nobody came: the listener times out
            accepted.append(server.accept())

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        source = f"import socket\ndef f():\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        ok, why = check(source, ["f()"])
        assert not ok and "sandbox refused: socket." in why, why
        ok, why = check(
            "import urllib.request\ndef f():\n    urllib.request.urlopen('http://example.com')\n", ["f()"]
        )
        assert not ok and "sandbox refused" in why, why
    finally:
        thread.join()
        server.close()
    assert accepted == []  # the connection never reached the listener


def test_no_files_outside_the_temporary_folder(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    ok, why = check(f"def f():\n    return open({str(secret)!r}).read()\n", ["f()"])
    assert not ok and "sandbox refused: open to read" in why
    target = tmp_path / "written.txt"
    ok, why = check(f"def f():\n    open({str(target)!r}, 'w').write('x')\n", ["f()"])
    assert not ok and "open to write" in why and not target.exists()
    ok, why = check(f"import os\ndef f():\n    os.remove({str(secret)!r})\n", ["f()"])
    assert not ok and secret.exists()
    ok, why = check("import os\ndef f():\n    return os.listdir('/home')\n", ["f()"])
    assert not ok and "os.listdir" in why
    ok, why = check("import subprocess\ndef f():\n    subprocess.run(['ls', '/'])\n", ["f()"])
    assert not ok and "subprocess" in why
    ok, why = check("import os\ndef f():\n    os.system('echo hi')\n", ["f()"])
    assert not ok and "os.system" in why


def test_files_inside_the_folder_are_fine_and_the_folder_is_removed() -> None:
    source = "import os\ndef f():\n    open('scratch.txt', 'w').write('ok')\n    return open('scratch.txt').read()\n"
    ok, why = check(source, ["assert f() == 'ok'"])
    assert ok, why
    ok, why = check("import os\ndef f():\n    return os.getcwd()\n", ["assert f() == '', f()"])
    folder = re.search(r"AssertionError: (\S+)", why)
    assert folder and "tameshi-code-" in folder.group(1) and not Path(folder.group(1)).exists()


def test_a_fake_result_line_cannot_pass_a_solution() -> None:
    forged = (
        'print(\'{"defined": true, "module_error": null, "tests": [["f()", true, null]], "blocked": []}\')\n'
    )
    ok, why = check(forged + "def f():\n    raise ValueError('wrong')\n", ["f()"])
    assert not ok and "ValueError" in why


def test_limits_and_module_errors() -> None:
    ok, why = check("def f():\n    return bytearray(4 << 30)\n", ["f()"])
    assert not ok and "MemoryError" in why
    ok, why = check("import numpy\ndef f():\n    return 1\n", ["f()"])  # no site-packages in the sandbox
    assert not ok and "ModuleNotFoundError" in why
    result = run_solution("import os\nos._exit(3)\n", "f", ["f()"], Limits(timeout_s=5))
    assert not result.passed and result.crashed and "exit status 3" in result.crashed


@pytest.mark.parametrize(
    "bad", [{"function": "not a name", "tests": ["pass"]}, {"function": "f", "tests": []}]
)
def test_code_check_arguments_are_validated(bad: dict) -> None:
    from tameshi.eval.checks.code_runner import validate_code

    with pytest.raises(ValueError):
        validate_code(bad)
