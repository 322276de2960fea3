"""`tameshi ask | chat | info | serve | eval | report | quantize | synth | bench`: the terminal way in.

Errors print one sentence; --debug shows the traceback.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from tameshi.errors import TameshiError
from tameshi.sampling_params import NOTEBOOK_PRESET, SamplingParams, asks_to_sample
from tameshi.server.config import ServerConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Try a new open chat LLM: ask it, chat with it, probe it, inspect it. No --model: the embedded default.",
)
# soft_wrap: an error stays one line however narrow the terminal
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _show_version(value: bool) -> None:
    if value:
        from tameshi import __version__

        print(f"tameshi {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    pass  # the options every command shares sit on their commands; this holds --version only


PRESETS = {"notebook": NOTEBOOK_PRESET}
# logprobs is an output the API returns, not a way to sample: a terminal answer has nowhere to show it
NOT_FLAGS = frozenset({"logprobs"})
_SAMPLING_FIELDS = [f.name for f in dataclasses.fields(SamplingParams) if f.repr and f.name not in NOT_FLAGS]

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="HF folder, hub id in the local cache, .gguf file, or synth:PRESET[:awq] (random weights: bf16, or AWQ 4-bit).",
    ),
]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 … (default: cuda if present).")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")]
QuantOpt = Annotated[
    str | None,
    typer.Option(
        help="int4 or int8: weight-only at run time; much faster CPU decode, slightly other numbers."
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
TpOpt = Annotated[
    int,
    typer.Option(
        "--tp",
        help="Tensor parallel over N GPUs (NCCL) or N CPU processes (gloo); tameshi starts the ranks, "
        "or run every rank under torchrun.",
    ),
]
PresetOpt = Annotated[
    str | None, typer.Option(help="Sampling preset: notebook (T 0.7, top_p 0.95, top_k 40, …).")
]
MaxNewOpt = Annotated[int | None, typer.Option("--max-new-tokens", "-n", help="Most tokens to generate.")]
MinNewOpt = Annotated[
    int | None, typer.Option("--min-new-tokens", help="Hold EOS back until this many tokens.")
]
SampleOpt = Annotated[
    bool | None,
    typer.Option(
        "--do-sample/--greedy",
        help="Sample, or take the argmax. Default: the model's; --temperature, --top-p, --top-k or --min-p turn sampling on.",
    ),
]
TempOpt = Annotated[float | None, typer.Option("--temperature", "-t")]
TopPOpt = Annotated[float | None, typer.Option("--top-p")]
TopKOpt = Annotated[int | None, typer.Option("--top-k")]
MinPOpt = Annotated[float | None, typer.Option("--min-p")]
RepOpt = Annotated[float | None, typer.Option("--repetition-penalty")]
SeedOpt = Annotated[int | None, typer.Option("--seed")]
StopOpt = Annotated[list[str] | None, typer.Option("--stop", help="Stop string (repeatable).")]
StopIdOpt = Annotated[
    list[int] | None, typer.Option("--stop-token-id", help="Extra stop token id (repeatable).")
]
IgnoreEosOpt = Annotated[bool | None, typer.Option("--ignore-eos", help="Run to the length limit.")]
SpecialOpt = Annotated[
    bool | None, typer.Option("--skip-special-tokens/--keep-special-tokens", help="Hide special tokens.")
]
SystemOpt = Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")]


def _params(options: dict[str, Any]) -> SamplingParams:
    """SamplingParams from a command's options (its locals()): the preset, then every flag given."""
    base: dict[str, Any] = {}
    preset = options.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise typer.BadParameter(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        base = dict(PRESETS[preset])
    for name in _SAMPLING_FIELDS:
        value = options.get(name)
        if value is not None and value != []:
            base[name] = value
    params = SamplingParams(**base)
    return dataclasses.replace(params, do_sample=True) if asks_to_sample(params) else params


def _load(model: str | None, device: str | None, dtype: str | None, quantize: str | None, tp: int = 1):
    from tameshi.api import LLM

    return LLM(model, device=device, dtype=dtype, quantize=quantize, tp=tp)


def _stream_answer(chunks, out: Console | None = None) -> tuple[str, str | None]:
    """Print deltas as they come; return the text and the finish reason."""
    text, reason = [], None
    for chunk in chunks:
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        text.append(chunk.text)
        reason = chunk.finish_reason or reason
    sys.stdout.write("\n")
    return "".join(text), reason


def _say_if_cut(reason: str | None, params: SamplingParams) -> None:
    if reason == "length":
        err.print(
            f"[yellow]⚠ answer cut at the length limit (max_new_tokens={params.max_new_tokens} "
            "or the context window); raise --max-new-tokens for more[/]"
        )


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="The question (one user turn).")],
    model: ModelOpt = None,
    system: SystemOpt = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Send the text as is, without the chat template.")
    ] = False,
    show_prompt: Annotated[
        bool, typer.Option("--show-prompt", help="Print the rendered prompt to stderr.")
    ] = False,
    preset: PresetOpt = None,
    max_new_tokens: MaxNewOpt = None,
    min_new_tokens: MinNewOpt = None,
    do_sample: SampleOpt = None,
    temperature: TempOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: RepOpt = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    stop_token_ids: StopIdOpt = None,
    ignore_eos: IgnoreEosOpt = None,
    skip_special_tokens: SpecialOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantOpt = None,
    tp: TpOpt = 1,
    debug: DebugOpt = False,
) -> None:
    """Ask one question and stream the answer to stdout."""
    params = _params(locals())
    llm = _load(model, device, dtype, quantize, tp)
    resolved = llm.sampling_params(params)
    if raw:
        if show_prompt:
            err.print(prompt, markup=False)
        chunks = llm.generate(prompt, resolved, stream=True)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        if show_prompt:
            err.print(llm.render_chat(messages), markup=False)
        chunks = llm.chat(messages, resolved, stream=True)
    _, reason = _stream_answer(chunks)
    _say_if_cut(reason, resolved)


@app.command()
def chat(
    model: ModelOpt = None,
    system: SystemOpt = None,
    preset: PresetOpt = None,
    max_new_tokens: MaxNewOpt = None,
    min_new_tokens: MinNewOpt = None,
    do_sample: SampleOpt = None,
    temperature: TempOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: RepOpt = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    stop_token_ids: StopIdOpt = None,
    ignore_eos: IgnoreEosOpt = None,
    skip_special_tokens: SpecialOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantOpt = None,
    tp: TpOpt = 1,
    debug: DebugOpt = False,
) -> None:
    """Multi-turn chat. /reset, /system TEXT, /set PARAM VALUE, /params, /exit. Ctrl-C stops an answer."""
    from tameshi.repl import ChatSession

    params = _params(locals())
    llm = _load(model, device, dtype, quantize, tp)
    ChatSession(llm, params, system, err).run()


@app.command()
def info(
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Architecture, size, dtype, context length, special tokens and chat template of a model."""
    from rich.table import Table

    from tameshi.model_info import describe

    llm = _load(model, device, dtype, quantize)
    table = Table(show_header=False, box=None)
    for key, value in describe(llm).items():
        table.add_row(f"[bold]{key}[/]", str(value))
    Console().print(table)


_SERVE = ServerConfig()
BatchInvariantOpt = Annotated[
    bool,
    typer.Option(
        "--batch-invariant",
        help="Each request's outputs bit for bit as if it ran alone, whatever it is batched with "
        "(slower at small batches and in prefill).",
    ),
]


@app.command()
def serve(
    model: ModelOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 opens it to the network.")
    ] = _SERVE.host,
    port: Annotated[int, typer.Option(help="Port (0: any free one).")] = _SERVE.port,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="TAMESHI_API_KEY", help="Require `Authorization: Bearer KEY` (all but /health)."),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="The model name clients send (default: from --model).")
    ] = None,
    max_n: Annotated[int, typer.Option(help="Most choices (n x prompts) per request.")] = _SERVE.max_n,
    max_tokens: Annotated[int, typer.Option(help="Most new tokens per choice.")] = _SERVE.max_tokens,
    max_prompt_tokens: Annotated[
        int | None, typer.Option(help="Longest prompt in tokens (default: the context window).")
    ] = None,
    max_logprobs: Annotated[int, typer.Option(help="Most top_logprobs per token.")] = _SERVE.max_logprobs,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = _SERVE.max_body_bytes,
    max_concurrent: Annotated[
        int, typer.Option(help="Engine requests in flight before 429.")
    ] = _SERVE.max_concurrent,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ORIGIN",
            help="Let browser apps from ORIGIN call the server (CORS); repeatable, '*': any.",
        ),
    ] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context window (default: the model's).")] = None,
    batch_invariant: BatchInvariantOpt = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantOpt = None,
    tp: TpOpt = 1,
    debug: DebugOpt = False,
) -> None:
    """Serve the model over OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics."""
    try:
        from tameshi.server.app import create_app
        from tameshi.server.launch import serve_forever
    except ImportError as e:
        raise TameshiError(
            f"`tameshi serve` needs fastapi and uvicorn (tameshi's dependencies; reinstall tameshi) ({e})"
        ) from e
    from tameshi.api import LLM
    from tameshi.engine.engine import EngineConfig
    from tameshi.server.config import served_model_name as name_for

    config = ServerConfig(
        host=host, port=port, api_key=api_key, served_model_name=name_for(model, served_model_name),
        max_n=max_n, max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens, max_logprobs=max_logprobs,
        max_body_bytes=max_body_bytes, max_concurrent=max_concurrent, allow_origins=tuple(allow_origin or ()),
    )  # fmt: skip
    engine_config = EngineConfig(max_model_len=max_model_len, batch_invariant=batch_invariant)
    llm = LLM(model, device=device, dtype=dtype, quantize=quantize, engine_config=engine_config, tp=tp)
    try:
        engine = llm.async_engine_for_this_thread()  # the thread that loaded the model steps it
        app_ = create_app(llm, config)
        key = "required" if api_key else "none (use --api-key to require one)"
        where = f"http://{host}:{port}/v1" if port else f"a free port of {host} (uvicorn names it below)"
        err.print(f"serving [bold]{config.served_model_name}[/] on {where}  (API key: {key})")
        serve_forever(app_, engine, host, port, log_level)
    finally:
        llm.close()


@app.command()
def quantize(
    model: Annotated[
        str | None, typer.Argument(help="Model to quantize (default: the embedded one).")
    ] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Folder to write.")] = "quantized",
    method: Annotated[
        str, typer.Option(help="awq (scale + clip search on calibration text) or rtn.")
    ] = "awq",
    group_size: Annotated[int, typer.Option(help="AWQ group size: 128, 64 or 32.")] = 128,
    shard_gib: Annotated[float, typer.Option(help="Shard size; host memory holds one shard.")] = 2.0,
    search_tokens: Annotated[int, typer.Option(help="Calibration tokens per AWQ search loss.")] = 512,
    debug: DebugOpt = False,
) -> None:
    """Write an AutoAWQ GEMM 4-bit checkpoint (loads in tameshi, AutoAWQ and vLLM)."""
    from pathlib import Path

    from tameshi.quantize.quantize import quantize_model

    folder = quantize_model(
        model,
        Path(out),
        method=method,
        group_size=group_size,
        shard_gib=shard_gib,
        search_tokens=search_tokens,
    )
    err.print(f"wrote {folder}")


@app.command()
def synth(
    preset: Annotated[str, typer.Argument(help="deepseek-llm-7b, deepseek-llm-67b, or a config.json path.")],
    out: Annotated[str, typer.Argument(help="Folder to write.")],
    quant: Annotated[str, typer.Option(help="awq (AutoAWQ GEMM), fp16 or bf16.")] = "awq",
    group_size: Annotated[int, typer.Option(help="AWQ group size.")] = 128,
    shard_gib: Annotated[float, typer.Option(help="Shard size; host memory holds one shard.")] = 2.0,
    seed: int = 0,
    device: Annotated[
        str, typer.Option(help="Where the random numbers are drawn (cuda: far faster).")
    ] = "cpu",
    debug: DebugOpt = False,
) -> None:
    """Random weights in a real model's shapes and checkpoint format, for benchmarks without downloads."""
    from pathlib import Path

    from tameshi.quantize.synth import synth as write

    folder = write(
        preset, Path(out), quant=quant, group_size=group_size, shard_gib=shard_gib, seed=seed, device=device
    )
    err.print(f"wrote {folder}")


@app.command()
def bench(
    model: ModelOpt = None,
    synth_preset: Annotated[
        str | None,
        typer.Option("--synth", help="Benchmark random weights in a preset's shapes (deepseek-llm-67b …)."),
    ] = None,
    synth_quant: Annotated[str, typer.Option(help="With --synth: awq, fp16 or bf16.")] = "awq",
    synth_dir: Annotated[
        str | None, typer.Option(help="With --synth: where the checkpoint is written (reused if there).")
    ] = None,
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens for decode runs.")] = 128,
    gen_len: Annotated[int, typer.Option(help="Tokens generated per request.")] = 128,
    ttft_prompt_len: Annotated[int, typer.Option(help="Prompt tokens for the TTFT run.")] = 1024,
    concurrency: Annotated[int, typer.Option(help="Concurrent requests for the aggregate run.")] = 8,
    concurrent_prompt_len: Annotated[
        int | None, typer.Option(help="Prompt tokens per concurrent request (default: --prompt-len).")
    ] = None,
    concurrent_gen_len: Annotated[
        int | None, typer.Option(help="Tokens per concurrent request (default: --gen-len).")
    ] = None,
    solo_checks: Annotated[
        int, typer.Option(help="Requests of the concurrent batch rerun alone; greedy outputs must match.")
    ] = 2,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the results here.")] = None,
    batch_invariant: BatchInvariantOpt = False,
    gpu_memory_utilization: Annotated[
        float, typer.Option(help="Share of the GPU's memory the model, KV pool and run may take.")
    ] = 0.9,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantOpt = None,
    tp: TpOpt = 1,
    debug: DebugOpt = False,
) -> None:
    """TTFT, batch-1 and concurrent decode speed, and weight bandwidth against this machine's own."""
    import json
    import subprocess
    import time
    from pathlib import Path

    from rich.table import Table

    from tameshi.api import LLM
    from tameshi.bench import run_bench
    from tameshi.engine.engine import EngineConfig
    from tameshi.loading.default import cache_dir

    if synth_preset is not None:
        if model is not None:
            raise typer.BadParameter("give --model or --synth, not both")
        folder = Path(synth_dir or cache_dir() / "synth" / f"{Path(synth_preset).stem}-{synth_quant}")
        if not (folder / "config.json").exists():
            err.print(f"writing synthetic {synth_preset} ({synth_quant}) to {folder}")
            # In a child process: its host memory does not count against the load measured here.
            cmd = [
                sys.executable,
                "-m",
                "tameshi",
                "synth",
                synth_preset,
                str(folder),
                "--quant",
                synth_quant,
            ]
            cmd += ["--device", "cuda"] if device != "cpu" and _has_cuda() else []
            subprocess.run(cmd, check=True)
        model = str(folder)
    start = time.perf_counter()
    if not 0 < gpu_memory_utilization <= 1:
        raise typer.BadParameter(f"--gpu-memory-utilization must lie in (0, 1], not {gpu_memory_utilization}")
    config = EngineConfig(
        max_num_seqs=max(concurrency, 1),
        batch_invariant=batch_invariant,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    llm = LLM(model, device=device, dtype=dtype, quantize=quantize, engine_config=config, tp=tp)
    load_s = time.perf_counter() - start
    result = run_bench(
        llm, synth_preset or llm.loaded.source.path.name, prompt_len=prompt_len, gen_len=gen_len,
        ttft_prompt_len=ttft_prompt_len, concurrency=concurrency, solo_checks=solo_checks,
        concurrent_prompt_len=concurrent_prompt_len, concurrent_gen_len=concurrent_gen_len,
        load_s=load_s, say=lambda text: err.print(f"[dim]{text}…[/]"),
    )  # fmt: skip
    table = Table(show_header=False)
    for key, value in result.rows():
        table.add_row(key, value)
    Console().print(table)
    if json_out:
        data = dataclasses.asdict(result) | {
            "weight_gbps": result.weight_gbps, "bandwidth_share": result.bandwidth_share
        }  # fmt: skip
        Path(json_out).write_text(json.dumps(data, indent=1))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


RunsDirOpt = Annotated[str, typer.Option("--runs-dir", help="Folder of run files.")]


@app.command("eval")
def eval_(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Model to probe; repeat for several (one run each)."),
    ] = None,
    suite: Annotated[
        str, typer.Option(help="Built-in suite name (default, smoke) or a .yaml file.")
    ] = "default",
    lang: Annotated[str, typer.Option(help="Languages to run, comma-separated.")] = "en,ja",
    repeat: Annotated[int, typer.Option(help="Answers per probe and language (sampling varies).")] = 1,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Probe id or category to keep (repeatable).")
    ] = None,
    runs_dir: RunsDirOpt = "tameshi-runs",
    batch_size: Annotated[int, typer.Option(help="Prompts handed to the engine at once.")] = 32,
    judge: Annotated[
        str | None,
        typer.Option(
            help="Score open-ended probes 1-5: an OpenAI-compatible URL or local:MODEL. Off by default."
        ),
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model name to send to a --judge URL.")] = None,
    preset: PresetOpt = None,
    max_new_tokens: MaxNewOpt = None,
    min_new_tokens: MinNewOpt = None,
    do_sample: SampleOpt = None,
    temperature: TempOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: RepOpt = None,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    stop_token_ids: StopIdOpt = None,
    ignore_eos: IgnoreEosOpt = None,
    skip_special_tokens: SpecialOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run a probe suite (EN/JA) with automatic checks; each run is saved as JSONL under --runs-dir."""
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tameshi.eval.judge import make_judge
    from tameshi.eval.report import write_report
    from tameshi.eval.runner import EvalConfig, model_label, plan, run_eval
    from tameshi.eval.suite import LANGS, load_suite

    params = _params(locals())
    langs = tuple(x.strip() for x in lang.split(",") if x.strip())
    if not langs or not set(langs) <= set(LANGS):
        raise typer.BadParameter(f"--lang takes a comma-separated list of {', '.join(LANGS)}")
    if repeat < 1 or batch_size < 1:
        raise typer.BadParameter("--repeat and --batch-size must be at least 1")
    probes = load_suite(suite)  # a bad suite file fails before any model loads
    config = EvalConfig(langs, repeat, batch_size, tuple(only or ()), preset)
    plan(probes, params, config)  # so is a selection with no probe in it
    grader = make_judge(judge, judge_model, device) if judge else None
    paths = []
    for name in model or [None]:
        llm = _load(name, device, dtype, quantize)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err, transient=False,
        ) as bar:  # fmt: skip
            task = bar.add_task("probing", total=None)
            label = model_label(name)

            def report(done: int, total: int, what: str, task=task, bar=bar, label=label) -> None:
                bar.update(task, completed=done, total=total, description=f"{label}: {what}")

            run = run_eval(llm, probes, params, config, Path(runs_dir), grader, judge, label, report)
            paths.append(run)
        err.print(f"run saved: {paths[-1]}")
        del llm
    result = write_report(paths, Path(runs_dir) / "report.html")
    _print_markdown(result.markdown, plain=False)
    err.print(f"report: {result.html_path}")


@app.command()
def report(
    runs: Annotated[
        list[str] | None,
        typer.Argument(help="Run files (.jsonl) or run ids; several go side by side. None: the latest run."),
    ] = None,
    runs_dir: RunsDirOpt = "tameshi-runs",
    out: Annotated[str | None, typer.Option("--out", "-o", help="HTML file to write.")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Print raw Markdown (to paste elsewhere).")] = False,
    debug: DebugOpt = False,
) -> None:
    """Summarise runs: Markdown to the terminal, plus one self-contained HTML file (tables, plots, answers)."""
    from pathlib import Path

    from tameshi.eval.records import find_runs
    from tameshi.eval.report import write_report

    paths = find_runs(list(runs or []), Path(runs_dir))
    html = Path(out) if out else paths[0].parent / "report.html"
    result = write_report(paths, html)
    _print_markdown(result.markdown, plain)
    err.print(f"report: {result.html_path}")


def _print_markdown(text: str, plain: bool) -> None:
    if plain:
        sys.stdout.write(text)
        return
    from rich.markdown import Markdown

    Console().print(Markdown(text))


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's usage errors, and typer's own copy of them (typer 0.29 vendors click as typer._click,
    whose exceptions are not click's): both print click's usage line and a one-line error."""
    import click

    return (click.ClickException, getattr(typer, "TyperException", click.ClickException))


def main(argv: list[str] | None = None) -> int:
    import click

    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        # standalone_mode=False: an Exit (typer's, for Ctrl-C too) comes back as the return value
        code = app(args=argv, prog_name="tameshi", standalone_mode=False)
    except TameshiError as e:
        if debug:
            err.print_exception()
        err.print(Text.assemble(("error: ", "red"), str(e)))
        return 1
    except (KeyboardInterrupt, click.exceptions.Abort, typer.Abort):
        err.print("interrupted")
        return 130
    except _usage_errors() as e:
        e.show()
        return e.exit_code
    except Exception as e:  # a bug, not bad input: still one line unless asked for more
        if debug:
            err.print_exception()
        else:
            msg = f"{type(e).__name__}: {e} (run with --debug for the traceback)"
            err.print(Text.assemble(("internal error: ", "red"), msg))
        return 2
    if code == 130:
        err.print("interrupted")
    return code if isinstance(code, int) else 0
