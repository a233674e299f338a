"""A round-robin cluster simulated in shards equals the whole cluster, exactly."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest

from predlat.errors import ConfigError
from predlat.sim.arrivals import synthetic_requests
from predlat.sim.cluster import build_cluster
from predlat.sim.device_file import load_device
from predlat.sim.shard import blocks, in_block, merge, run_block


def _specs():
    # two device types, the second with a host arrival hand-off that the shards holding
    # only the first type must still wait (the whole cluster waits the largest)
    gpu, cpu = load_device("gpu"), load_device("cpu4")
    return [gpu, replace(cpu, law=replace(cpu.law, arrival_s=2e-4))]


def _requests(specs, n=4000, seed=3):
    models = sorted(set(specs[0].models) & set(specs[1].models))
    return list(
        synthetic_requests(dict.fromkeys(models, 900.0), n, lambda m: 0.05, seed=seed, hp_frac=0.3)
    )


def test_blocks_tile_the_devices():
    assert blocks(5, 3) == [range(0, 1), range(1, 3), range(3, 5)]
    assert blocks(2, 8) == [range(0, 1), range(1, 2)]
    with pytest.raises(ConfigError):
        blocks(0, 1)


def test_a_block_gets_the_requests_round_robin_sends_it():
    reqs = list(range(23))
    for block in blocks(5, 3):
        assert list(in_block(reqs, 5, block)) == [n for n in reqs if n % 5 in block]


@pytest.mark.parametrize("policy", ["predlat", "coarse"])
def test_sharded_run_equals_the_whole_cluster(policy):
    specs = _specs()
    reqs = _requests(specs)
    build = partial(build_cluster, specs, 5, policy, seed=1, train_batches=60)
    whole = run_block(lambda b: build(only=b), reqs, 5, range(5), keep=True)
    parts = [run_block(lambda b: build(only=b), reqs, 5, b, keep=True) for b in blocks(5, 3)]
    joined = merge(parts[::-1])  # in any order
    assert joined.summary() == whole.summary()
    assert joined.busy_s == whole.busy_s
    key = lambda o: o.request_id  # noqa: E731
    assert sorted(joined.stats.outcomes, key=key) == sorted(whole.stats.outcomes, key=key)
    by = lambda r: (r.device, r.batch_id)  # noqa: E731
    assert sorted(joined.stats.records, key=by) == sorted(whole.stats.records, key=by)
    assert {r.device for r in joined.stats.records} == set(range(5))


def test_only_round_robin_is_sharded():
    specs = _specs()
    build = partial(build_cluster, specs, 4, "oblivious", route="least-loaded", train_batches=0)
    with pytest.raises(ConfigError, match="cannot be sharded"):
        run_block(lambda b: build(only=b), _requests(specs, 50), 4, range(0, 2))
    with pytest.raises(ConfigError, match="block"):
        build(only=range(2, 6))


def test_merge_refuses_parts_that_do_not_tile():
    specs = _specs()
    build = partial(build_cluster, specs, 4, "oblivious", train_batches=0)
    reqs = _requests(specs, 200)
    a = run_block(lambda b: build(only=b), reqs, 4, range(0, 1))
    c = run_block(lambda b: build(only=b), reqs, 4, range(2, 4))
    with pytest.raises(ValueError, match="tile"):
        merge([a, c])
