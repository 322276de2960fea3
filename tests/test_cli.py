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
        body = {"prompt": "Once upon a time", "max_tokens": 16, "stream": True, "temperature": 0}
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


def test_usage_errors_are_clicks_one_line_not_an_internal_error(capsys):
    """A bad flag value, a missing argument, an unknown option or command: click's usage line and one
    error line naming what was wrong, exit 2 (typer 0.29 raises its own copy of click's exceptions,
    which once fell through to "internal error")."""
    cases = [
        (["ask", "--temperature", "abc", "Hi"], "'--temperature'"),
        (["ask"], "Missing argument 'prompt'"),
        (["ask", "--bogus", "hi"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
    ]
    for argv, named in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert named in err and "internal error" not in err, (argv, err)
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("tameshi ")
    assert main(["ask", "-h"]) == 0 and "Usage" in capsys.readouterr().out


def test_ctrl_c_says_interrupted_and_exits_130(monkeypatch, capsys):
    """Ctrl-C during a command (here while the model loads): "interrupted" on stderr and exit status
    130, so that a script can tell it from a finished answer (typer returns it as an Exit)."""
    import tameshi.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tameshi.cli, "_load", interrupted)
    assert main(["ask", "Hi"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_a_sampling_flag_turns_sampling_on_unless_greedy():
    """--temperature, --top-p, --top-k or --min-p given alone sample (HF would ignore them while the
    model's default is greedy, and the answer would not change); --greedy and temperature 0 stay greedy."""
    from tameshi.cli import _params

    assert _params({"temperature": 1.5}).do_sample is True
    assert _params({"top_p": 0.5}).do_sample is True
    assert _params({"temperature": 1.5, "do_sample": False}).do_sample is False
    assert _params({"temperature": 0.0}).do_sample is None  # greedy by SamplingParams.greedy
    assert _params({"max_new_tokens": 4}).do_sample is None  # the model's default decides


def test_chat_set_reads_values_strictly_and_turns_sampling_on():
    """/set: a word that is not a boolean is refused (not read as False), stop lists split at |,
    stop_token_ids as integers, and a sampling knob on a greedy session turns sampling on."""
    import io

    from rich.console import Console

    from tameshi.repl import ChatSession
    from tameshi.sampling_params import SamplingParams

    class Model:
        def sampling_params(self, params):
            return params.resolve(None)

    out = io.StringIO()
    chat = ChatSession(Model(), SamplingParams(do_sample=False), None, Console(file=out, width=200))
    chat.set_param("ignore_eos maybe")
    assert chat.params.ignore_eos is False and "cannot read 'maybe'" in out.getvalue()
    chat.set_param("ignore_eos on")
    chat.set_param("stop a|b")
    chat.set_param("stop_token_ids 7|9")
    assert chat.params.ignore_eos is True and chat.params.stop == ("a", "b")
    assert chat.params.stop_token_ids == (7, 9)
    chat.set_param("temperature 0")
    assert chat.params.do_sample is False
    chat.set_param("temperature 0.7")
    assert chat.params.do_sample is True and "do_sample = True" in out.getvalue()
