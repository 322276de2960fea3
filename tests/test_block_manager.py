"""Block manager and scheduler units: ref counts, prefix hits, budgets, chunk boundaries, preemption."""

import pytest

from tameshi.engine.block_manager import BlockManager
from tameshi.engine.scheduler import Scheduler, SchedulerConfig
from tameshi.engine.sequence import Sequence
from tameshi.loading.default import default_model_dir
from tameshi.sampling_params import SamplingParams
from tameshi.tokenizer import Tokenizer

BS = 4


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(default_model_dir(progress=False))


_ids = iter(range(10**6))


def seq(tok, tokens, max_new=8) -> Sequence:
    params = SamplingParams(max_new_tokens=max_new, do_sample=False).resolve({})
    return Sequence(next(_ids), list(tokens), params, tok, max_model_len=10_000)


def compute_all(bm, s):
    s.num_computed_tokens = len(s)
    bm.commit(s)


def test_allocate_free_and_ref_counts(tok):
    bm = BlockManager(num_blocks=10, block_size=BS)
    a = seq(tok, range(10))  # 3 blocks: 4 + 4 + 2
    bm.allocate(a)
    assert len(a.block_table) == 3 and bm.num_free_blocks == 7 and a.num_cached_tokens == 0
    compute_all(bm, a)
    b = seq(tok, [*range(8), 99, 98, 97])  # shares the two full blocks of a
    assert bm.can_allocate(b)
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.num_cached_tokens == 8
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]
    bm.free_seq(a)
    assert [bm.blocks[i].ref_count for i in b.block_table[:2]] == [1, 1]
    bm.free_seq(b)
    assert bm.num_used_blocks == 0 and bm.num_free_blocks == 10


def test_prefix_hit_is_verified_by_ids_and_never_covers_the_last_token(tok):
    bm = BlockManager(num_blocks=10, block_size=BS)
    a = seq(tok, range(8))
    bm.allocate(a)
    compute_all(bm, a)
    same = seq(tok, range(8))  # identical prompt: only the first block may be reused
    bm.allocate(same)
    assert same.num_cached_tokens == 4
    # a forged cache entry (colliding hash) is rejected because the ids differ
    other = seq(tok, [7, 7, 7, 7, 1])
    first_hash = next(h for h, b in bm.cached.items() if b == a.block_table[0])
    bm.cached[first_hash] = a.block_table[0]
    bm.blocks[a.block_table[0]].token_ids = (7, 7, 7, 7)  # ids differ from the chain that hashed it
    assert bm._prefix_hits(other) == []


def test_uncomputed_blocks_are_not_shared(tok):
    bm = BlockManager(num_blocks=10, block_size=BS)
    a = seq(tok, range(9))
    bm.allocate(a)  # allocated, but its K/V are not computed yet
    b = seq(tok, range(9))
    bm.allocate(b)
    assert b.num_cached_tokens == 0 and set(a.block_table).isdisjoint(b.block_table)


def test_append_slot_takes_a_block_at_the_boundary(tok):
    bm = BlockManager(num_blocks=3, block_size=BS)
    s = seq(tok, range(4))
    bm.allocate(s)
    s.token_ids.append(5)
    assert bm.can_append(s)
    bm.append_slot(s)
    assert len(s.block_table) == 2


def test_budgets_and_chunked_prefill_boundaries(tok):
    bm = BlockManager(num_blocks=100, block_size=BS)
    sch = Scheduler(SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=32), bm)
    long, short1, short2 = seq(tok, range(100)), seq(tok, range(200, 205)), seq(tok, range(300, 303))
    for s in (long, short1, short2):
        sch.add(s)
    chunks = []
    for _ in range(4):
        batch = sch.schedule()
        assert len(batch) <= 2 and sum(batch.num_tokens) <= 32
        chunks.append(dict(zip([s.seq_id for s in batch.seqs], batch.num_tokens, strict=True)))
        for s, n in zip(batch.seqs, batch.num_tokens, strict=True):
            s.num_computed_tokens += n
            if s.num_computed_tokens == len(s):
                s.token_ids.append(1)  # a sampled token
    assert [c.get(long.seq_id) for c in chunks] == [32, 32, 32, 4]  # chunks of the 32-token budget
    assert chunks[0] == {long.seq_id: 32}  # the budget is spent: short1 waits
    assert chunks[3] == {long.seq_id: 4, short1.seq_id: 5}  # the budget left admits short1's whole prompt
    assert short2.seq_id not in {k for c in chunks for k in c}  # max_num_seqs=2 keeps it waiting


def test_preemption_frees_the_newest_and_requeues_it_first(tok):
    bm = BlockManager(num_blocks=4, block_size=BS)
    sch = Scheduler(SchedulerConfig(), bm)
    a, b = seq(tok, range(8)), seq(tok, range(10, 18))
    sch.add(a)
    sch.add(b)
    batch = sch.schedule()
    assert batch.seqs == [a, b] and bm.num_free_blocks == 0
    for s in (a, b):
        s.num_computed_tokens = len(s)
        s.token_ids.append(1)  # each needs a third block now
    batch = sch.schedule()
    assert batch.seqs == [a] and sch.waiting[0] is b and b.block_table == [] and b.preempted == 1
    assert sch.num_preemptions == 1
