"""P x K identity sampling for the triplet loss (BoT's RandomIdentitySampler), distributed-aware."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from reid.utils.errors import ConfigError, DatasetError


class PKSampler(Sampler[list[int]]):
    """Yields batches of P distinct identities x K images each (K = ``num_instances``, P = batch_size / K).

    Each epoch, every identity's images are shuffled, padded to a multiple of K by drawing again from its own
    images (so identities with fewer than K images work, as in BoT) and cut into K-groups; each batch then
    takes one K-group from each of P distinct identities that still have groups, as BoT's sampler does.
    Unlike BoT, identities are drawn so that the epoch always reaches the largest possible number of batches
    (an identity is forced into a batch only when leaving it out would strand its groups), so every epoch
    has the same length and uses every K-group that any valid batch order could: each image about once.

    The order depends only on (seed, epoch): call :meth:`set_epoch` before each epoch. With ``world_size`` > 1
    every rank builds the same global batches and takes its own P / world_size identities of each, so ranks
    see disjoint whole identities, the same number of batches, and their slices union to the global batch.
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ConfigError(
                f"SOLVER.IMS_PER_BATCH ({batch_size}) must be a positive multiple of DATALOADER.NUM_INSTANCE "
                f"({num_instances}) for the PK sampler."
            )
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        if self.num_pids_per_batch % world_size:
            raise ConfigError(
                f"The PK sampler splits each batch of P = {self.num_pids_per_batch} identities "
                f"(SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE) evenly over {world_size} processes; "
                "choose SOLVER.IMS_PER_BATCH so that P is a multiple of the number of processes."
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        indices_by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            indices_by_pid[int(pid)].append(index)
        if len(indices_by_pid) < self.num_pids_per_batch:
            raise DatasetError(
                f"The training set has {len(indices_by_pid)} identities, fewer than the P = "
                f"{self.num_pids_per_batch} identities a PK batch needs; lower SOLVER.IMS_PER_BATCH or "
                "raise DATALOADER.NUM_INSTANCE."
            )
        self._indices_by_pid = [np.asarray(indices_by_pid[pid]) for pid in sorted(indices_by_pid)]
        self._groups_per_pid = np.array([-(-len(i) // num_instances) for i in self._indices_by_pid])
        self._num_batches = self._max_batches()
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.epoch = 0
        self._cached: tuple[int, list[np.ndarray]] | None = None

    def _max_batches(self) -> int:
        """The most batches of P distinct identities: the largest b with sum_i min(groups_i, b) >= P * b.

        The left side minus P * b is concave in b and 0 at b = 0, so the feasible b form an interval.
        """
        p, groups = self.num_pids_per_batch, self._groups_per_pid
        low, high = 0, int(groups.sum()) // p
        while low < high:
            mid = (low + high + 1) // 2
            if np.minimum(groups, mid).sum() >= p * mid:
                low = mid
            else:
                high = mid - 1
        return low

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batch order the next iteration produces."""
        self.epoch = epoch

    def global_batches(self) -> list[np.ndarray]:
        """The current epoch's batches over all ranks: arrays of P * K indices, identity by identity."""
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self._make_batches(self.epoch))
        return self._cached[1]

    def _make_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        p, k = self.num_pids_per_batch, self.num_instances
        groups: list[list[np.ndarray]] = []
        for indices in self._indices_by_pid:
            indices = rng.permutation(indices)
            padding = -len(indices) % k
            if padding:
                indices = np.concatenate([indices, rng.choice(indices, padding, replace=True)])
            groups.append(list(indices.reshape(-1, k)))
        remaining = self._groups_per_pid.copy()
        batches = []
        for batches_left in range(self._num_batches, 0, -1):
            # Identities with a group for every remaining batch can be skipped only while the spare capacity
            # (groups beyond what the remaining batches need) lasts; past that they must be picked.
            spare = int(np.minimum(remaining, batches_left).sum()) - p * batches_left
            critical = np.flatnonzero(remaining >= batches_left)
            forced = rng.choice(critical, max(0, len(critical) - spare), replace=False)
            others = np.setdiff1d(np.flatnonzero(remaining), forced)
            chosen = np.concatenate([forced, rng.choice(others, p - len(forced), replace=False)])
            rng.shuffle(chosen)  # so forced identities do not always land on the first ranks
            batches.append(np.concatenate([groups[g].pop() for g in chosen]))
            remaining[chosen] -= 1
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.num_pids_per_batch * self.num_instances // self.world_size  # whole identities
        start = self.rank * per_rank
        for batch in self.global_batches():
            yield batch[start : start + per_rank].tolist()

    def __len__(self) -> int:
        return self._num_batches
