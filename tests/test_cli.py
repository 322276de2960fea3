"""The terminal way in: `ask` streams and owns up to a length cut; `chat` keeps history and obeys commands."""

import json
import subprocess
import sys

from tameshi.cli import main


def test_ask_streams_and_reports_a_length_cut(capsys):
    assert main(["ask", "Tell me a long story about a cat.", "-n", "8"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "cut at the length limit" in err and "max_new_tokens=8" in err


def test_ask_show_prompt_and_preset(capsys):
    assert main(["ask", "Hi", "-n", "4", "--preset", "notebook", "--seed", "1", "--show-prompt"]) == 0
    _, err = capsys.readouterr()
    assert "<|im_start|>user\nHi<|im_end|>" in err  # the exact rendered prompt, special tokens shown


def test_info_names_the_template_origin(capsys):
    assert main(["info"]) == 0
    out, _ = capsys.readouterr()
    assert "LlamaForCausalLM" in out and "tokenizer_config.json" in out and "<|im_end|>" in out


def test_chat_repl_commands_and_history():
    script = "\n".join(
        [
            "/set max_new_tokens 6",
            "/set temperature nonsense",
            "/params",
            "My name is Ada.",
            "/system You answer in one word.",
            "What is my name?",
            "/reset",
            "/exit",
        ]
    )
    r = subprocess.run(
        [sys.executable, "-m", "tameshi", "chat", "--greedy"],
        input=script + "\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "max_new_tokens = 6" in r.stderr
    assert "cannot read 'nonsense'" in r.stderr or "temperature" in r.stderr
    assert "system prompt set" in r.stderr and "conversation cleared" in r.stderr
    assert r.stdout.count(">>> ") >= 7  # one prompt per line: nothing killed the session
    assert "Traceback" not in r.stderr


def test_every_sampling_field_has_a_flag():
    import dataclasses

    import typer.main

    from tameshi.cli import NOT_FLAGS, app
    from tameshi.sampling_params import SamplingParams

    commands = {c.name: c for c in typer.main.get_command(app).commands.values()}
    fields = [f.name for f in dataclasses.fields(SamplingParams) if f.repr and f.name not in NOT_FLAGS]
    assert {f.name for f in dataclasses.fields(SamplingParams)} >= NOT_FLAGS  # names real fields only
    for name in ("ask", "chat", "eval"):
        params = {p.name for p in commands[name].params}
        missing = [f for f in fields if f not in params]
        assert not missing, (name, missing)


def test_quantize_command_writes_an_awq_checkpoint(tmp_path, capsys):
    out = tmp_path / "rtn"
    assert main(["quantize", "-o", str(out), "--method", "rtn", "--group-size", "64"]) == 0
    assert (out / "quant_config.json").is_file() and "wrote" in capsys.readouterr().err
    assert main(["quantize", "-o", str(tmp_path / "bad"), "--group-size", "128"]) == 1
    assert "group size 128" in capsys.readouterr().err


def test_serve_wires_its_options_into_the_server():
    """`tameshi serve` for real: a free port, the API key and a limit from the command line, Ctrl-C."""
    import re
    import signal

    import pytest

    httpx = pytest.importorskip("httpx")
    cmd = [sys.executable, "-m", "tameshi", "serve", "--port", "0", "--api-key", "k3y", "--max-n", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:  # uvicorn names the port the OS picked
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                url = found[1]
                break
        assert url, "the server never said where it listens"
        assert httpx.get(f"{url}/health").status_code == 200  # open without the key
        assert httpx.get(f"{url}/v1/models").status_code == 401
        key = {"Authorization": "Bearer k3y"}
        body = {"prompt": "Hi", "max_tokens": 2}
        r = httpx.post(f"{url}/v1/completions", json={**body, "n": 2}, headers=key)
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"  # --max-n 1
        r = httpx.post(f"{url}/v1/completions", json=body, headers=key, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "smollm2-135m-instruct"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


def test_serve_lets_an_open_stream_finish_on_ctrl_c():
    """Ctrl-C while a stream is open: the server takes no new requests, but the open one runs to its
    end ([DONE]) before the process exits 0; the engine keeps stepping while uvicorn drains."""
    import re
    import signal
    import threading

    import pytest

    httpx = pytest.importorskip("httpx")
    cmd = [sys.executable, "-m", "tameshi", "serve", "--port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                url = found[1]
                break
        assert url, "the server never said where it listens"
        threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()  # keep the pipe drained
        body = {"prompt": "Once upon a time", "max_tokens": 40, "stream": True, "temperature": 0}
        events = []
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:
                        proc.send_signal(signal.SIGINT)
        assert events[-1] == "[DONE]"
        finish = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]]
        assert finish[-1] in ("length", "stop") and len(events) > 3
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
