"""One intra-op thread for the many small torch ops of the tensor data path on CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_threaded(device: torch.device | str = "cpu") -> Iterator[None]:
    """On CPU, run the enclosed torch ops with one intra-op thread, then restore the setting.

    A batch's augmentation (or an image's resize) is a few dozen small ops. Each parallel region waits for
    all of torch's threads, and on a machine with more busy threads than cores every such wait costs a
    scheduler time slice: measured on 2 shared cores (load ~7), 2 threads gave 360 img/s and 1 thread
    16,000 img/s for 64x32 batches. One thread is far faster than any CPU model consumes; CUDA work is
    not affected (``device`` other than CPU: nothing changes).
    """
    if torch.device(device).type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
