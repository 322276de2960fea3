"""The batching engine: batched == solo, preemption, prefix cache, aborts, per-request sampling."""

import random

import pytest

from tameshi import LLM, SamplingParams
from tameshi.engine.engine import Engine, EngineConfig
from tameshi.errors import PromptTooLongError

N_NEW = 16


@pytest.fixture(scope="module")
def llm():
    return LLM(progress=False)


def make_engine(llm, **config) -> Engine:
    return Engine(llm.loaded.model, llm.tokenizer, llm.loaded.generation_config, EngineConfig(**config))


def greedy(n=N_NEW, **extra) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, do_sample=False, **extra).resolve({})


def prompts(llm, count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "while",
        "tokyo",
        "rain",
        "fell",
        "softly",
        "and",
        "東京",
        "の",
        "雨",
        "が",
        "静か",
        "に",
        "降る",
    ]
    out = []
    for i in range(count):
        length = rng.choice([3, 8, 20, 45, 90, 150])
        text = " ".join(rng.choice(words) for _ in range(length))
        out.append(llm.encode_chat([{"role": "user", "content": f"{i}: {text}"}]))
    return out


_SOLO: dict = {}


def solo(llm, ids, params) -> list[int]:
    key = (tuple(ids), params)
    if key not in _SOLO:
        engine = make_engine(llm, enable_prefix_caching=False)
        _SOLO[key] = [t for out in engine.stream(ids, params) for t in out.token_ids]
    return _SOLO[key]


def run_all(engine, requests) -> dict[int, list[int]]:
    got = {i: [] for i in range(len(requests))}
    for i, out in engine.generate_batch(requests):
        got[i] += out.token_ids
    return got


def test_batched_equals_solo(llm):
    ps = prompts(llm, 16)
    assert len({len(p) for p in ps}) > 4  # mixed lengths
    engine = make_engine(llm, max_num_batched_tokens=256)  # long prompts prefill in chunks beside decodes
    got = run_all(engine, [(p, greedy()) for p in ps])
    for i, p in enumerate(ps):
        assert got[i] == solo(llm, p, greedy()), i
    assert engine.stats().kv_blocks_used == 0


def test_preemption_keeps_outputs_identical(llm):
    ps = prompts(llm, 8, seed=1)
    n_new = 40  # long enough that every sequence needs new blocks while decoding
    longest = max(len(p) for p in ps) + n_new
    # room for the longest sequence and a little more: sequences admitted together must evict each other
    engine = make_engine(llm, block_size=16, num_kv_blocks=-(-longest // 16) + 2)
    got = run_all(engine, [(p, greedy(n_new)) for p in ps])
    assert engine.stats().preemptions > 0
    for i, p in enumerate(ps):
        assert got[i] == solo(llm, p, greedy(n_new)), i
    assert engine.stats().kv_blocks_used == 0


def test_shared_prefix_reuses_blocks_and_gives_the_same_tokens(llm):
    system = "You are a careful assistant. " * 12
    ps = [
        llm.encode_chat([{"role": "system", "content": system}, {"role": "user", "content": q}])
        for q in ("What is 2+2?", "Name a colour.", "日本の首都は？", "Say hello.")
    ]
    cached = make_engine(llm)
    first = run_all(cached, [(ps[0], greedy())])  # fills the cache
    rest = run_all(cached, [(p, greedy()) for p in ps[1:]])
    assert cached.stats().prefix_cache_hit_rate > 0
    plain = make_engine(llm, enable_prefix_caching=False)
    expected = run_all(plain, [(p, greedy()) for p in ps])
    assert [first[0], *rest.values()] == list(expected.values())


def test_aborting_half_leaves_the_rest_identical_and_frees_every_block(llm):
    rng = random.Random(3)
    ps = prompts(llm, 32, seed=2)
    engine = make_engine(llm)
    ids = [engine.add_request(p, greedy()) for p in ps]
    doomed = set(rng.sample(ids, 16))
    abort_at = {i: rng.randint(0, N_NEW) for i in doomed}
    got = {i: [] for i in ids}
    step = 0
    while engine.has_unfinished():
        for seq_id in [i for i in doomed if abort_at[i] == step]:
            engine.abort(seq_id)
        for seq_id, out in engine.step():
            got[seq_id] += out.token_ids
        step += 1
    for seq_id, p in zip(ids, ps, strict=True):
        if seq_id not in doomed:
            assert got[seq_id] == solo(llm, p, greedy()), seq_id
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.running == stats.waiting == 0


def test_prompt_longer_than_context_is_refused_alone(llm):
    engine = make_engine(llm, max_model_len=64)
    ok = llm.encode_chat([{"role": "user", "content": "Hi"}])
    first = engine.add_request(ok, greedy())
    with pytest.raises(PromptTooLongError, match="64"):
        engine.add_request(list(range(100)), greedy())
    outs = [out for step in iter(engine.step, []) for _, out in step]
    assert outs[-1].finish_reason in ("stop", "length") and first == 0
    # the sync API: the bad prompt gets an error completion, the others run
    done = llm.generate([ok, [5] * (llm.engine.max_model_len + 1), ok], greedy())
    assert [c.finish_reason == "error" for c in done] == [False, True, False]
    assert "context window" in done[1].error and done[0].token_ids == done[2].token_ids


def test_seeded_sampling_alone_equals_inside_a_batch(llm):
    ps = prompts(llm, 6, seed=4)
    sampled = SamplingParams(
        max_new_tokens=N_NEW, do_sample=True, temperature=0.9, top_p=0.9, seed=11
    ).resolve({})
    alone = run_all(make_engine(llm), [(ps[0], sampled)])[0]
    others = [
        (p, SamplingParams(max_new_tokens=N_NEW, do_sample=True, seed=i).resolve({}))
        for i, p in enumerate(ps[1:])
    ]
    mixed = run_all(make_engine(llm), [others[0], (ps[0], sampled), *others[1:], (ps[1], greedy(stop=["."]))])
    assert mixed[1] == alone


def test_async_consumers_on_the_real_engine(llm):
    """Many asyncio consumers share the engine; those that leave early are aborted and free their blocks."""
    import asyncio

    fresh = LLM(progress=False)
    messages = [[{"role": "user", "content": f"Count to {i}."}] for i in range(12)]
    params = SamplingParams(max_new_tokens=12, do_sample=False)
    expected = [c.text for c in fresh.generate([fresh.encode_chat(m) for m in messages], params)]

    async def consume(i):
        chunks = []
        gen = fresh.achat(messages[i], params)
        async for chunk in gen:
            chunks.append(chunk)
            if i % 3 == 0 and len(chunks) == 2:
                await gen.aclose()  # this client disconnects
                return None
        return "".join(c.text for c in chunks).strip(), chunks[-1].finish_reason

    async def main():
        return await asyncio.gather(*(consume(i) for i in range(12)))

    results = asyncio.run(main())
    try:
        for i, r in enumerate(results):
            if i % 3:
                assert r[0] == expected[i].strip() and r[1] in ("stop", "length")
        assert fresh.async_engine.is_alive
        assert fresh.engine.stats().kv_blocks_used == 0
        # the synchronous API keeps working through the engine's thread
        assert fresh.ask("Hi", SamplingParams(max_new_tokens=4, do_sample=False)).completion_tokens <= 4
    finally:
        fresh.close()


def test_logprobs_equal_log_softmax_of_the_models_logits(llm):
    """Logprobs from batched paged decoding against one plain forward over prompt + answer."""
    import torch

    from tameshi.engine.kv_cache import ContiguousKVCache

    ps = prompts(llm, 3, seed=5)
    asks = [
        greedy(logprobs=4),
        SamplingParams(max_new_tokens=N_NEW, do_sample=True, temperature=1.3, seed=2, logprobs=0).resolve({}),
        greedy(),
    ]
    engine = make_engine(llm)
    got: dict[int, list] = {i: [] for i in range(3)}
    tokens: dict[int, list[int]] = {i: [] for i in range(3)}
    for i, out in engine.generate_batch(list(zip(ps, asks, strict=True))):
        tokens[i] += out.token_ids
        got[i] += out.logprobs or []
    assert got[2] == []  # not asked for
    model = llm.loaded.model
    for i in (0, 1):
        ids = torch.tensor(ps[i] + tokens[i])
        cache = ContiguousKVCache(model.config, len(ids), ids.device, torch.float32)
        cache.begin_step(len(ids))
        with torch.inference_mode():
            logits = model.compute_logits(model(ids, torch.arange(len(ids)), cache))
        expected = torch.log_softmax(logits[len(ps[i]) - 1 : -1].float(), dim=-1)
        assert [lp.token_id for lp in got[i]] == tokens[i]
        chosen = expected.gather(1, torch.tensor(tokens[i])[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor([lp.logprob for lp in got[i]]), chosen, atol=1e-4, rtol=0)
        n = asks[i].logprobs
        for step, lp in enumerate(got[i]):
            assert len(lp.top) == n
            if n:
                top = torch.topk(expected[step], n)
                assert [t for t, _ in lp.top] == top.indices.tolist()
                torch.testing.assert_close(
                    torch.tensor([v for _, v in lp.top]), top.values, atol=1e-4, rtol=0
                )
        if i == 0:  # greedy: the chosen token is the most likely one
            assert all(lp.top[0][0] == lp.token_id for lp in got[i])


def test_a_request_that_breaks_a_step_fails_alone(llm):
    """A forward or sampling error in a batch step fails only the request that causes it: the batch is
    rerun one sequence at a time, the others' outputs equal their solo runs, and its blocks come back.
    Through AsyncEngine the culprit's consumer gets the error and the engine stays alive."""
    import asyncio

    from tameshi.engine.async_engine import AsyncEngine

    engine = make_engine(llm)
    poison = 4321
    ps = prompts(llm, 3, seed=7)
    ps[1] = ps[1] + [poison]
    run = engine.runner.run

    def run_unless_poisoned(batch):
        if any(poison in s.token_ids for s in batch.seqs):
            raise RuntimeError("this request breaks the forward")
        return run(batch)

    engine.runner.run = run_unless_poisoned
    solo = [[t for o in make_engine(llm).stream(p, greedy()) for t in o.token_ids] for p in (ps[0], ps[2])]
    with pytest.raises(RuntimeError, match="breaks the forward"):
        list(engine.generate_batch([(p, greedy()) for p in ps]))  # the sync API raises it
    assert engine.stats().kv_blocks_used == 0

    async_engine = AsyncEngine(engine)
    async_engine.start()
    try:

        async def consume(p):
            try:
                return [t async for o in async_engine.generate(p, greedy()) for t in o.token_ids]
            except RuntimeError as e:
                return str(e)

        async def main():
            return await asyncio.gather(*(consume(p) for p in ps))

        got = asyncio.run(main())
        assert got[1] == "this request breaks the forward"
        assert [got[0], got[2]] == solo
        assert async_engine.is_alive
        assert engine.stats().kv_blocks_used == 0
    finally:
        async_engine.stop()


def test_a_step_that_fails_for_every_request_still_raises(llm):
    """When every sequence fails alone too, the fault is the engine's: step raises (AsyncEngine then
    marks itself dead and /health says so)."""
    engine = make_engine(llm)

    def broken(batch):
        raise RuntimeError("device lost")

    engine.runner.run = broken
    with pytest.raises(RuntimeError, match="device lost"):
        list(engine.generate_batch([(p, greedy()) for p in prompts(llm, 2)]))


def run_with_logprobs(engine, requests) -> dict[int, list[tuple[int, float]]]:
    got = {i: [] for i in range(len(requests))}
    for i, out in engine.generate_batch(requests):
        got[i] += [(t, lp.logprob) for t, lp in zip(out.token_ids, out.logprobs, strict=True)]
    return got


def test_batch_invariant_outputs_equal_solo_bit_for_bit(llm):
    """Tokens and their logprobs, float for float: each request, greedy or seeded, batched with others
    (prompts chunked beside decodes) against the same request alone."""
    ps = prompts(llm, 12, seed=4)
    seeded = [
        SamplingParams(max_new_tokens=12, do_sample=True, temperature=0.9, top_p=0.9, seed=i, logprobs=0)
        for i in range(len(ps))
    ]
    jobs = [(p, greedy(12, logprobs=0) if i % 2 else seeded[i].resolve({})) for i, p in enumerate(ps)]
    config = dict(batch_invariant=True, max_num_batched_tokens=64)
    batched = run_with_logprobs(make_engine(llm, **config), jobs)
    assert any(len(p) > 64 for p in ps)  # some prompts are prefilled in several chunks
    for i, job in enumerate(jobs):
        alone = run_with_logprobs(make_engine(llm, **config), [job])[0]
        assert batched[i] == alone, i


def test_fixed_chunks_cut_prompts_where_a_solo_run_does(llm):
    """With decodes and other prompts in the steps, every prefill chunk still starts at a multiple of
    the budget, and a step overshoots the budget by its decodes at most."""
    budget = 32
    engine = make_engine(llm, batch_invariant=True, max_num_batched_tokens=budget, max_num_seqs=8)
    chunks: dict[int, list[tuple[int, int]]] = {}
    real_run = engine.runner.run

    def recording_run(batch):
        decodes = sum(1 for seq, n in zip(batch.seqs, batch.num_tokens, strict=True) if n == 1)
        assert sum(batch.num_tokens) <= budget + decodes
        for seq, n in zip(batch.seqs, batch.num_tokens, strict=True):
            if seq.num_computed_tokens < seq.prompt_len:
                chunks.setdefault(seq.seq_id, []).append((seq.num_computed_tokens, n))
        return real_run(batch)

    engine.runner.run = recording_run
    ps = [list(range(10, 10 + length)) for length in (5, 70, 40, 33, 100, 9)]
    for i, p in enumerate(ps):
        engine.add_request(p, greedy(6))
        if i == 1:
            engine.step()  # the rest arrive while the first ones prefill and decode
    while engine.has_unfinished():
        engine.step()
    assert engine.stats().prefix_cache_hit_rate == 0  # off: a hit would move the boundaries
    for seq_id, p in enumerate(ps):
        expected = [(s, min(budget, len(p) - s)) for s in range(0, len(p), budget)]
        assert chunks[seq_id] == expected, seq_id


def test_nan_logits_fail_that_request_alone_with_a_clear_error(llm):
    """A request whose logits come out NaN (here: the embedding gives NaN for a token its prompt holds,
    as an overflow would) fails with ModelOutputError instead of decoding token 0 to an empty answer;
    the others in its batch, which then reuse its freed KV blocks, equal their solo runs, and every
    block comes back. (The table itself is left alone: tied to the head, a NaN row there would make
    every request's logits NaN.)"""
    import asyncio

    from tameshi.engine.async_engine import AsyncEngine
    from tameshi.errors import ModelOutputError

    poison = 4321
    ps = prompts(llm, 3, seed=11)
    ps[1] = ps[1] + [poison]
    solo = [[t for o in make_engine(llm).stream(p, greedy()) for t in o.token_ids] for p in (ps[0], ps[2])]

    def overflow(module, args, out):
        return out.masked_fill((args[0] == poison)[:, None], float("nan"))

    hook = llm.loaded.model.embed_tokens.register_forward_hook(overflow)
    try:
        engine = make_engine(llm)
        with pytest.raises(ModelOutputError, match="logits came out NaN"):
            list(engine.stream(ps[1], greedy()))
        assert engine.stats().kv_blocks_used == 0
        async_engine = AsyncEngine(engine)
        async_engine.start()
        try:

            async def consume(p):
                try:
                    return [t async for o in async_engine.generate(p, greedy()) for t in o.token_ids]
                except ModelOutputError as e:
                    return str(e)

            async def main():
                return await asyncio.gather(*(consume(p) for p in ps))

            got = asyncio.run(main())
            assert "NaN" in got[1] and [got[0], got[2]] == solo
            assert async_engine.is_alive and engine.stats().kv_blocks_used == 0
        finally:
            async_engine.stop()
    finally:
        hook.remove()
