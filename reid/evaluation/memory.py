"""The evaluator's memory budget: how much it may use, how blocks and chunks are sized, what it used.

Policy only. What each buffer costs is stated next to the code that allocates it (the ``*_BYTES``
constants and ``nbytes`` / ``*_bytes`` properties of :mod:`reid.evaluation.protocol`,
:mod:`reid.evaluation.distances`, :mod:`reid.evaluation.ranking` and :mod:`reid.evaluation.rerank`);
this module turns those costs and a budget into block and chunk sizes, and keeps the peak.
"""

from __future__ import annotations

import numbers

import torch

from reid.evaluation.distances import GEMM_ROWS, MAX_BLOCK_ROWS, padded
from reid.utils.errors import ReIDError

#: Memory budget on CPU when none is given (bytes).
DEFAULT_CPU_BUDGET_BYTES = 256 * 2**20
#: Fraction of the free CUDA memory used as budget when none is given.
CUDA_BUDGET_FRACTION = 0.5
#: On CPU, ranks are computed on chunks of queries using about this much working memory whatever the
#: budget: fastest on Market- and MSMT-sized problems on a 2-core CPU (smaller chunks pay per-chunk
#: overhead, larger ones fall out of cache and pay page faults on every fresh allocation).
CPU_RANK_CHUNK_BYTES = 48 * 2**20


def memory_budget(device: torch.device, requested: int | None) -> int:
    """Bytes the block buffers may use: ``requested``, else 256 MiB on CPU or half the free CUDA memory."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, numbers.Integral) or requested <= 0:
            raise ReIDError(f"memory_budget_bytes must be a positive integer, got {requested!r}.")
        return int(requested)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(CUDA_BUDGET_FRACTION * (free + cached))
    return DEFAULT_CPU_BUDGET_BYTES


def chunk_budget(device: torch.device, budget: int, cpu_cap: int) -> int:
    """Working memory for one chunk: the budget, capped on CPU where cache-sized chunks run faster."""
    return min(budget, cpu_cap) if device.type == "cpu" else budget


def row_blocks(cost: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges whose summed ``cost`` fits in ``budget`` (at least one row each)."""
    cumulative = torch.cumsum(cost, 0).cpu()
    blocks, start, spent = [], 0, 0
    while start < len(cumulative):
        end = max(int(torch.searchsorted(cumulative, spent + max(budget, 1), right=True)), start + 1)
        blocks.append((start, end))
        spent, start = int(cumulative[end - 1]), end
    return blocks


def block_rows(available_bytes: int, row_bytes: int, num_rows: int) -> int:
    """Query rows per block: what ``available_bytes`` holds, a multiple of 16 in [16, 1024], and not
    more than the (padded) number of queries."""
    rows = min(max(available_bytes, 0) // max(row_bytes, 1), MAX_BLOCK_ROWS, padded(num_rows))
    return max(GEMM_ROWS, rows // GEMM_ROWS * GEMM_ROWS)


def split_budget(budget: int, fixed_bytes: int, row_bytes: int, num_rows: int,
                 device: torch.device) -> tuple[int, int]:
    """(query rows per block, working budget of the chunks that rank or post-process a block).

    About half of what the fixed buffers leave goes to the block, the rest to ranking chunks (capped
    on CPU, see :data:`CPU_RANK_CHUNK_BYTES`). A block has at least 16 rows; when that already
    exceeds the budget, chunks get nothing and rank one query at a time, so the peak stays at the
    minimum working set.
    """
    chunks = chunk_budget(device, budget // 2, CPU_RANK_CHUNK_BYTES)
    rows = block_rows(budget - fixed_bytes - chunks, row_bytes, num_rows)
    return rows, chunk_budget(device, max(budget - fixed_bytes - rows * row_bytes, 0), CPU_RANK_CHUNK_BYTES)


class PeakMemory:
    """Extra memory of a computation: measured on CUDA, accounted from block shapes on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.accounted = 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            self.baseline = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)

    def account(self, nbytes: int) -> None:
        """Record that ``nbytes`` are in use at once now (on CPU; CUDA measures instead)."""
        self.accounted = max(self.accounted, int(nbytes))

    def peak(self) -> int:
        """The largest use so far, in bytes."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self.baseline)
        return self.accounted


def nbytes(*tensors: torch.Tensor) -> int:
    """Total bytes of ``tensors``' elements."""
    return sum(t.nbytes for t in tensors)
