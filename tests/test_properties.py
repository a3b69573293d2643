"""Property tests of the numeric core: Holm's adjustment, the samplers, the layer-group LRs and the cache
keys. Each property is checked against an oracle written here (a brute-force Holm, a set count), never
against the function itself. In CI the Hypothesis profile is derandomized (tests/conftest.py)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from thaw.core import cache
from thaw.core.strategies import PhasePlan
from thaw.data.images import EpochSampler, ShardSampler, sample_weights
from thaw.metrics.stats import holm

p_values = st.lists(st.one_of(st.floats(0, 1), st.just(math.nan)), max_size=12)


def holm_by_definition(p: list[float]) -> list[float]:
    """Holm's adjusted p-value of test i: the largest, over the tests j at or below it in the sorted order,
    of min(1, (m - rank_j) * p_j); NaN tests are outside the family. O(m^2), straight from the definition."""
    family = sorted((x, i) for i, x in enumerate(p) if not math.isnan(x))
    m = len(family)
    out = [math.nan] * len(p)
    for k, (_, i) in enumerate(family):
        out[i] = max(min(1.0, (m - r) * family[r][0]) for r in range(k + 1))
    return out


@given(p_values)
def test_holm_is_the_step_down_definition(p):
    got, want = holm(p), holm_by_definition(p)
    assert len(got) == len(p)
    for g, w, x in zip(got, want, p):
        if math.isnan(x):
            assert math.isnan(g)
        else:
            assert g == pytest.approx(w, abs=1e-12) and x <= g <= 1.0


@given(p_values, st.floats(0.001, 0.2))
def test_holm_rejects_what_the_sequential_procedure_rejects(p, alpha):
    """Adjusted p <= alpha exactly for the tests Holm's sequential procedure rejects: walk the sorted
    p-values, reject while p_(k) <= alpha / (m - k), stop at the first that is not."""
    family = sorted((x, i) for i, x in enumerate(p) if not math.isnan(x))
    rejected = set()
    for k, (x, i) in enumerate(family):
        if x > alpha / (len(family) - k):
            break
        rejected.add(i)
    # a p-value within rounding of its threshold may go either way
    assume(all(abs(x * (len(family) - k) - alpha) > 1e-12 for k, (x, _) in enumerate(family)))
    adjusted = holm(p)
    assert {i for i, q in enumerate(adjusted) if not math.isnan(q) and q <= alpha} == rejected


@given(
    n=st.integers(1, 60), seed=st.integers(0, 2**31 - 1), epoch=st.integers(0, 50), world=st.integers(1, 4)
)
def test_epoch_sampler_ranks_cover_the_split_and_replay_by_seed_and_epoch(n, seed, epoch, world):
    def draw(rank: int) -> list:
        sampler = EpochSampler(n, seed, rank=rank, world=world)
        sampler.set_epoch(epoch)
        return list(sampler)

    ranks = [draw(r) for r in range(world)]
    assert all(len(r) == len(ranks[0]) == math.ceil(n / world) for r in ranks)  # as many steps on each
    drawn = [i for r in ranks for i, _ in r]
    assert set(drawn) == set(range(n))  # every image, padding only repeats
    assert len(drawn) - n == (-n) % world
    seeds = {}
    for i, s in (pair for r in ranks for pair in r):
        assert seeds.setdefault(i, s) == s  # one augmentation seed per image, on every rank
    assert ranks == [draw(r) for r in range(world)]  # the same (seed, epoch): the same order and seeds


@given(n=st.integers(0, 60), world=st.integers(1, 5))
def test_shard_sampler_shards_are_the_split_once(n, world):
    shards = [list(ShardSampler(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@given(st.lists(st.integers(0, 3), min_size=1, max_size=40))
def test_balanced_weights_give_every_present_class_the_same_mass(labels):
    w = sample_weights(labels)
    mass = Counter()
    for y, x in zip(labels, w.tolist()):
        mass[y] += x
    assert all(m == pytest.approx(1.0) for m in mass.values())


@given(
    n_groups=st.integers(1, 12),
    train=st.sampled_from(["head", "all", "last:1", "last:3", "first:2", "last:50"]),
    lr=st.floats(1e-6, 1.0),
    ratio=st.floats(1.0, 1000.0),
    decay=st.floats(0.1, 1.0),
)
def test_group_lrs_ratio_decay_and_frozen_groups(n_groups, train, lr, ratio, decay):
    plan = PhasePlan(name="p", train=train, lr=lr, lr_ratio=ratio, layer_decay=decay)
    lrs = plan.group_lr(n_groups)
    trainable = plan.groups(n_groups)
    assert len(lrs) == n_groups
    assert all((lrs[g] > 0) == (g in trainable) for g in range(n_groups))  # frozen groups: LR 0
    if trainable:
        top = max(trainable)
        assert lrs[top] == pytest.approx(lr / ratio, rel=1e-12)  # the topmost trained group: lr / ratio
        for g in trainable:  # each group below: one more factor of the decay
            depth = sum(1 for t in trainable if t > g)
            assert lrs[g] == pytest.approx(lr / ratio * decay**depth, rel=1e-9)


@given(
    n_groups=st.integers(1, 8),
    train=st.sampled_from(["all", "last:2", "first:1"]),
    data=st.data(),
)
def test_explicit_group_lrs_are_kept_only_where_a_group_trains(n_groups, train, data):
    given_lrs = data.draw(st.lists(st.floats(1e-6, 1.0), min_size=n_groups, max_size=n_groups))
    plan = PhasePlan(name="p", train=train, group_lrs=tuple(given_lrs))
    trainable = set(plan.groups(n_groups))
    assert plan.group_lr(n_groups) == [x if g in trainable else 0.0 for g, x in enumerate(given_lrs)]


identities = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.lists(st.integers(), max_size=3)),
    max_size=6,
)


@given(identities)
def test_a_cache_key_ignores_key_order_and_is_a_file_name(identity):
    k = cache.key(identity)
    assert k == cache.key(dict(reversed(list(identity.items()))))  # order of the fields: no matter
    assert len(k) == 32 and all(c in "0123456789abcdef" for c in k)


@given(identities, identities)
def test_different_identities_get_different_keys(a, b):
    assume(a != b)
    assert cache.key(a) != cache.key(b)


@given(identities, st.text(min_size=1, max_size=8), st.integers())
def test_changing_any_one_field_changes_the_key(identity, field, value):
    changed = {**identity, field: value}
    assume(changed != identity)
    assert cache.key(changed) != cache.key(identity)


def test_the_sampler_order_depends_on_the_epoch():
    orders = {tuple(i for i, _ in _epoch(EpochSampler(30, 0), e)) for e in range(5)}
    assert len(orders) == 5


def _epoch(sampler: EpochSampler, epoch: int) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_weighted_sampler_draws_classes_evenly():
    labels = [0] * 90 + [1] * 10
    sampler = EpochSampler(100, 0, weights=sample_weights(labels))
    counts = Counter(labels[i] for e in range(20) for i, _ in _epoch(sampler, e))
    assert abs(counts[0] - counts[1]) / sum(counts.values()) < 0.1
    assert torch.equal(sample_weights(labels), sample_weights(labels))
