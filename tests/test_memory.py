"""The memory budget: block and chunk sizes, and the accounted peak checked against real allocations."""

from __future__ import annotations

import collections
import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from reid.evaluation import distances, memory, ranking
from reid.evaluation.protocol import Identities, MetricAccumulator
from reid.evaluation.rank import evaluate_features, evaluate_rank
from reid.evaluation.rerank import evaluate_reranked
from reid.utils.errors import ReIDError
from tests.test_rank import feature_problem


def test_peak_memory_stays_within_budget():
    rng = np.random.default_rng(8)
    qf, gf, *ids = feature_problem(rng, num_q=60, num_g=400)
    budget = 200_000  # room for several queries per block
    result = evaluate_features(qf, gf, *ids, memory_budget_bytes=budget)
    assert 0 < result.peak_memory_bytes <= budget
    unbounded = evaluate_features(qf, gf, *ids)
    assert unbounded.peak_memory_bytes > result.peak_memory_bytes
    np.testing.assert_allclose(unbounded.AP, result.AP, atol=1e-12)


def test_blocks_really_split_the_work_and_agree(monkeypatch):
    rng = np.random.default_rng(12)
    qf, gf, *ids = feature_problem(rng, num_q=70, num_g=2000, dim=8)
    whole = evaluate_features(qf, gf, *ids, metric="euclidean")
    blocks = []
    original_block = distances.FeatureDistances.block

    def counting_block(self, rows, out):
        blocks.append(rows.stop - rows.start)
        return original_block(self, rows, out)

    monkeypatch.setattr(distances.FeatureDistances, "block", counting_block)
    split = evaluate_features(qf, gf, *ids, metric="euclidean", memory_budget_bytes=300_000)
    assert len(blocks) >= 3 and max(blocks) < 70 and sum(blocks) == 70
    assert all(rows % 16 == 0 for rows in blocks[:-1])
    assert split.peak_memory_bytes <= 300_000 < 4 * 70 * 2000  # within budget, below the full matrix alone
    for field in ("AP", "INP", "cmc"):
        np.testing.assert_array_equal(getattr(split, field), getattr(whole, field))


def test_full_matrix_is_never_built_when_queries_exceed_the_block_cap(monkeypatch):
    rng = np.random.default_rng(13)
    num_q = distances.MAX_BLOCK_ROWS + 60
    qf, gf = rng.standard_normal((num_q, 6)).astype(np.float32), rng.standard_normal((40, 6)).astype(np.float32)
    q_pids, g_pids = rng.integers(1, 5, num_q), rng.integers(1, 5, 40)
    buffers = []
    original_block = distances.FeatureDistances.block

    def recording_block(self, rows, out):
        buffers.append(out.shape[0])
        return original_block(self, rows, out)

    monkeypatch.setattr(distances.FeatureDistances, "block", recording_block)
    evaluate_features(qf, gf, q_pids, g_pids, np.zeros(num_q, np.int64), np.ones(40, np.int64))
    # The default budget holds the whole matrix many times over, and still two blocks were used.
    assert buffers == [distances.MAX_BLOCK_ROWS, distances.MAX_BLOCK_ROWS]


@pytest.mark.slow
def test_gallery_chunked_memory_does_not_grow_with_the_gallery(tmp_path):
    # Measured, not accounted: the resident-set high-water mark of a fresh process while it evaluates a
    # 400,000-image gallery under a 16 MiB budget. 16 whole rows of distances and their ranking keys
    # would take over 150 MiB; the gallery-chunked path needs the budget plus ~50 bytes per image.
    script = tmp_path / "measure.py"
    script.write_text(
        "import sys, numpy as np, torch\n"
        "from reid.evaluation import evaluate_features\n"
        "torch.set_num_threads(1)\n"
        "rng = np.random.default_rng(0)\n"
        "num_g = 400_000\n"
        "qf = rng.standard_normal((40, 8)).astype(np.float32)\n"
        "gf = rng.standard_normal((num_g, 8)).astype(np.float32)\n"
        "ids = (rng.integers(1, 50, 40), rng.integers(0, 50, num_g),\n"
        "       rng.integers(0, 4, 40), rng.integers(0, 4, num_g))\n"
        "evaluate_features(qf[:16], gf[:4096], *[i[:16] if len(i) == 40 else i[:4096] for i in ids],\n"
        "                  memory_budget_bytes=16 * 2**20)  # warm up the code paths\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) * 1024\n"
        "try:\n"
        "    open('/proc/self/clear_refs', 'w').write('5')  # reset the high-water mark to the current RSS\n"
        "except OSError:\n"
        "    sys.exit(3)\n"
        "before = status('VmRSS:')\n"
        "result = evaluate_features(qf, gf, *ids, memory_budget_bytes=16 * 2**20)\n"
        "print(status('VmHWM:') - before, result.peak_memory_bytes)\n")
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    if done.returncode == 3 or not Path("/proc/self/clear_refs").exists():
        pytest.skip("this kernel cannot reset the resident-set high-water mark")
    assert done.returncode == 0, done.stderr
    growth, accounted = map(int, done.stdout.split())
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"
    assert accounted < 64 * 2**20


def test_budget_defaults_and_refusals():
    cpu = torch.device("cpu")
    assert memory.memory_budget(cpu, None) == memory.DEFAULT_CPU_BUDGET_BYTES == 256 * 2**20
    assert memory.memory_budget(cpu, 1234) == 1234
    for bad in (0, -5, 2.5, True, "1"):
        with pytest.raises(ReIDError, match="memory_budget_bytes"):
            memory.memory_budget(cpu, bad)
    assert memory.chunk_budget(cpu, 10**12, memory.CPU_RANK_CHUNK_BYTES) == memory.CPU_RANK_CHUNK_BYTES
    assert memory.chunk_budget(cpu, 1000, memory.CPU_RANK_CHUNK_BYTES) == 1000
    assert memory.chunk_budget(torch.device("cuda"), 10**12, 5) == 10**12  # no cap off the CPU


def test_row_blocks_and_block_rows_fit_the_budget():
    cost = torch.tensor([5, 5, 5, 20, 1, 1])
    assert memory.row_blocks(cost, 10) == [(0, 2), (2, 3), (3, 4), (4, 6)]  # a row over budget goes alone
    assert memory.row_blocks(cost, 0) == [(i, i + 1) for i in range(6)]  # at least one row per block
    assert memory.block_rows(10**9, 100, 5000) == distances.MAX_BLOCK_ROWS
    assert memory.block_rows(0, 100, 5000) == 16  # a block has at least one granule
    assert memory.block_rows(10**9, 100, 20) == 32  # no more than the padded number of queries
    assert memory.block_rows(100 * 40, 100, 5000) == 32  # what fits, rounded down to a granule
    rows, chunk = memory.split_budget(10**6, 10**5, 1000, 5000, torch.device("cpu"))
    assert rows % 16 == 0 and rows > 16 and chunk > 0
    assert 10**5 + rows * 1000 + chunk <= 10**6


# --------------------------------------------------------------------------------------------------
# The accounting against what is really allocated


def allocated_peak(fn):
    """(the most bytes of tensors alive at once while ``fn()`` runs, its result), measured.

    The torch profiler records every allocation and free of the CPU allocator; summed in time order
    they give the live bytes at each moment, whatever a kernel allocates and whether or not the
    accounting knows about it. Deterministic (bytes, not time) and fast enough for small problems.
    """
    gc.collect()  # no tensor of an earlier test freed in the middle
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [event for event in prof.profiler.kineto_results.events() if event.name() == "[memory]"]
    assert events, "the profiler recorded no allocation: nothing was measured"
    live = peak = 0
    for event in sorted(events, key=lambda event: event.start_ns()):
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak, result


def clustered(seed: int, num_q: int, num_g: int, noise: float, dim: int = 8):
    """Features around 30 identity centres: ``noise`` 0.3 ranks like a trained model, 100 like an untrained one."""
    rng = np.random.default_rng(seed)
    pids = rng.integers(0, 30, num_q + num_g)
    feats = (rng.standard_normal((30, dim))[pids] + noise * rng.standard_normal((num_q + num_g, dim))).astype(
        np.float32)
    cams = rng.integers(0, 3, num_q + num_g)
    return feats[:num_q], feats[num_q:], pids[:num_q] + 1, pids[num_q:] + 1, cams[:num_q], cams[num_q:]


@pytest.fixture
def paths_taken(monkeypatch):
    """Counts of the ranking paths that ran: candidates, searchsorted, gallery chunks."""
    counts = collections.Counter()

    def spy(owner, name, key):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)

    spy(ranking, "_ranks_among_candidates", "candidates")
    spy(ranking, "_ranks_by_searchsorted", "searchsorted")
    spy(distances.FeatureDistances, "column_chunks", "gallery chunks")
    return counts


@pytest.mark.parametrize("path, noise, num_g, half_gallery, budget, chunk_cap", [
    ("candidates", 0.3, 2003, False, 600_000, None),  # several blocks; a ragged last chunk copied once
    ("searchsorted", 100.0, 2003, False, None, None),  # one block of every query
    ("candidates", 0.3, 2000, True, 600_000, None),  # a float16 gallery converted chunk by chunk
    ("gallery chunks", 0.3, 4001, False, 200_000, 1024),  # below 16 whole rows: chunks of 1,024 images
    ("gallery chunks", 100.0, 4001, True, 200_000, 1024),
])
def test_accounted_peak_covers_what_evaluate_features_allocates(monkeypatch, paths_taken, path, noise, num_g,
                                                                half_gallery, budget, chunk_cap):
    # Every byte constant and nbytes of the accounting, checked at once against the allocator: a kernel
    # that came to allocate more than its constant says would push the measured peak over the reported one.
    if chunk_cap:
        monkeypatch.setattr(distances, "_MAX_GALLERY_CHUNK_ROWS", chunk_cap)
    qf, gf, *ids = clustered(19, 70, num_g, noise)
    gallery = torch.from_numpy(gf).half() if half_gallery else gf
    measured, result = allocated_peak(lambda: evaluate_features(qf, gallery, *ids, metric="euclidean",
                                                                memory_budget_bytes=budget))
    assert set(paths_taken) == {path}
    assert 0 < measured <= result.peak_memory_bytes, f"allocated {measured:,} B, accounted {result.peak_memory_bytes:,}"


@pytest.mark.parametrize("noise", [0.3, 100.0])
def test_evaluate_rank_chunks_stay_within_the_budget(noise):
    # evaluate_rank reports no peak; its ranking chunks (rank_cost per query) must fit the budget, besides
    # the per-query and per-image bookkeeping.
    qf, gf, *ids = clustered(20, 70, 2000, noise)
    distmat = torch.cdist(torch.from_numpy(qf), torch.from_numpy(gf))
    bookkeeping = (Identities(*ids, 70, 2000, torch.device("cpu")).nbytes
                   + MetricAccumulator(70, torch.device("cpu")).nbytes)
    budget = 300_000  # several queries per chunk, several chunks
    for matrix in (distmat, distmat.double()):  # ranked in place, or each chunk converted to float32
        measured, _ = allocated_peak(lambda: evaluate_rank(matrix, *ids, memory_budget_bytes=budget))
        assert 0 < measured <= budget + bookkeeping


def test_accounted_peak_covers_what_evaluate_reranked_allocates():
    qf, gf, *ids = clustered(21, 30, 200, 0.5, dim=16)
    for budget in (None, 100_000):  # one neighbour block, or 64 x 64 blocks and small joins
        measured, result = allocated_peak(lambda: evaluate_reranked(qf, gf, *ids, memory_budget_bytes=budget))
        assert 0 < measured <= result.peak_memory_bytes


def test_the_allocation_check_catches_an_underestimate(monkeypatch):
    # The checks above are not vacuous: counting the ranking kernels' buffers too low (the int64 keys but
    # not the searchsorted counts) makes the measured peak exceed the reported one.
    qf, gf, *ids = clustered(19, 70, 2003, 100.0)
    monkeypatch.setattr(ranking, "RANK_BYTES_PER_ENTRY", 8)
    measured, result = allocated_peak(lambda: evaluate_features(qf, gf, *ids, metric="euclidean"))
    assert measured > result.peak_memory_bytes
    monkeypatch.undo()
    monkeypatch.setattr(distances, "_MAX_GALLERY_CHUNK_ROWS", 1024)
    monkeypatch.setattr(ranking, "CHUNKED_RANK_BYTES_PER_ENTRY", 4 + 8)
    qf, gf, *ids = clustered(19, 70, 4001, 0.3)
    measured, result = allocated_peak(lambda: evaluate_features(qf, gf, *ids, metric="euclidean",
                                                                memory_budget_bytes=200_000))
    assert measured > result.peak_memory_bytes
