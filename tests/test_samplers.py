"""PK sampler invariants: P distinct ids x K images, one pass per epoch, determinism, distributed slices."""

from __future__ import annotations

from collections import Counter

import pytest

from reid.data import PKSampler
from reid.utils.errors import ConfigError, DatasetError

# 12 identities with 1..12 images: small ones need padding with replacement, big ones several K-groups.
PIDS = [pid for pid in range(12) for _ in range(pid + 1)]


def check_pk(batches: list[list[int]], p: int, k: int) -> None:
    for batch in batches:
        assert len(batch) == p * k
        ids = [PIDS[i] for i in batch]
        assert len(set(ids)) == p
        assert all(count == k for count in Counter(ids).values())
        # identities come as contiguous K-groups, which is what lets ranks take whole identities
        assert all(len(set(ids[j : j + k])) == 1 for j in range(0, p * k, k))


def test_batches_are_p_distinct_ids_times_k() -> None:
    sampler = PKSampler(PIDS, batch_size=16, num_instances=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    check_pk(batches, p=4, k=4)


def test_epoch_uses_every_image_about_once() -> None:
    sampler = PKSampler(PIDS, batch_size=8, num_instances=4, seed=3)
    # ceil(n / K) K-groups per identity: 24 in all, which 12 batches of P = 2 can use up exactly
    assert len(sampler) == 12
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 12  # the same length every epoch
        used = Counter(i for batch in batches for i in batch)
        assert set(used) == set(range(len(PIDS)))  # every image
        assert all(count <= 4 for count in used.values())  # repeats only pad an identity to a multiple of K


def test_length_is_the_most_batches_distinct_identities_allow() -> None:
    # one identity holds 40 images (10 groups of K = 4) and three hold one each: with P = 2 distinct
    # identities per batch, at most 3 batches can be built, each pairing the big identity with a small one
    pids = [0] * 40 + [1, 2, 3]
    batches = list(PKSampler(pids, batch_size=8, num_instances=4, seed=0))
    assert len(batches) == 3
    assert all(0 in {pids[i] for i in batch} for batch in batches)


def test_single_image_identities_are_repeated() -> None:
    pids = list(range(6))  # one image each
    batches = list(PKSampler(pids, batch_size=6, num_instances=3, seed=1))
    assert len(batches) == 3
    for batch in batches:
        assert sorted(Counter(batch).values()) == [3, 3]


def test_deterministic_given_seed_and_epoch() -> None:
    a = PKSampler(PIDS, batch_size=16, num_instances=4, seed=7)
    b = PKSampler(PIDS, batch_size=16, num_instances=4, seed=7)
    assert list(a) == list(b)
    assert list(a) != list(PKSampler(PIDS, batch_size=16, num_instances=4, seed=8))
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    check_pk(second, p=4, k=4)
    assert second != first
    a.set_epoch(0)
    assert list(a) == first


@pytest.mark.parametrize("epoch", [0, 5])
def test_distributed_ranks_split_each_global_batch(epoch: int) -> None:
    single = PKSampler(PIDS, batch_size=16, num_instances=4, seed=2)
    ranks = [PKSampler(PIDS, batch_size=16, num_instances=4, seed=2, rank=r, world_size=2) for r in range(2)]
    for sampler in [single, *ranks]:
        sampler.set_epoch(epoch)
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for global_batch, part0, part1 in zip(single, *ranks, strict=True):
        assert len(part0) == len(part1) == 8
        assert part0 + part1 == global_batch
        assert not {PIDS[i] for i in part0} & {PIDS[i] for i in part1}  # whole identities per rank


def test_invalid_settings_are_explained() -> None:
    with pytest.raises(ConfigError, match="multiple of DATALOADER.NUM_INSTANCE"):
        PKSampler(PIDS, batch_size=10, num_instances=4)
    with pytest.raises(ConfigError, match="3 processes"):
        PKSampler(PIDS, batch_size=16, num_instances=4, rank=0, world_size=3)
    with pytest.raises(DatasetError, match="has 2 identities"):
        PKSampler([0, 0, 1, 1], batch_size=12, num_instances=4)
