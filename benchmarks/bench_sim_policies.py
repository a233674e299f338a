"""Scheduling policies on a simulated device, over a sweep of loads (seconds, no machine).

Six zoo-like synthetic models on one simulated device with `--slots` slots, Poisson
arrivals at each load (a fraction of `slots` x the mean solo rate of batch-4 requests),
30% high priority, deadlines 10 x solo latency at batch 1 (as `predlat compare` sets
them). Fitted predictors start from a short training run of `oblivious` on the same
device. Prints, per load and policy: deadlines met (high, low, all), rejections, p50
latency and the live forecast error (mean relative error of the mean forecast each
dispatched batch was admitted with). `serial` here runs one batch at a time at one
slot's speed: the simulator has no all-core mode, so it understates a real serial.

    python benchmarks/bench_sim_policies.py [--loads 0.3,0.5,0.7,0.9]
        [--policies serial,coarse,predlat] [--slots 2] [--sigma 0.1] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from predlat.devices.simulated import InterferenceLaw
from predlat.scheduling import Priority, SchedulerConfig, get_policy, requests_from_arrivals
from predlat.sim import ZOO_LIKE, build_simulation, synthetic_profile
from predlat.workload.arrivals import open_loop_workload

PROFILE = synthetic_profile(ZOO_LIKE)
NAMES = sorted(ZOO_LIKE)


def requests(slots: int, load: float, duration: float, seed: int) -> list:
    per_request = statistics.mean(PROFILE.solo_latency(m, 4) / 4 for m in NAMES)
    rate = load * slots / per_request / len(NAMES)
    arrivals = open_loop_workload(dict.fromkeys(NAMES, rate), duration, seed, hp_frac=0.3)
    return requests_from_arrivals(arrivals, lambda m: 10 * PROFILE.solo_latency(m, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", default="0.3,0.5,0.7,0.9,1.1")
    parser.add_argument("--policies", default="serial,coarse,predlat")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--sigma", type=float, default=0.1, help="log-normal noise of work")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    law = InterferenceLaw(base=0.05, compute=0.25, memory=0.35, noise_sigma=args.sigma)
    sim = dict(slots=args.slots, law=law)
    warm = build_simulation(
        PROFILE, NAMES, policy="oblivious", seed=99, config=SchedulerConfig(high_reserve=0), **sim
    )
    training = warm.run(requests(args.slots, 0.7, 5.0, 99)).records
    print(f"{args.slots} slots, noise sigma {args.sigma}, training {len(training)} batches")
    print(f"{'load':>5} {'policy':<9}{'hp':>8}{'lp':>8}{'all':>8}{'rej':>7}{'p50ms':>7}{'err':>7}")
    for load in (float(x) for x in args.loads.split(",")):
        for name in args.policies.split(","):
            policy = get_policy(name)
            res = build_simulation(
                PROFILE,
                NAMES,
                policy=name,
                seed=args.seed,
                forecaster=lambda d, p=policy: p.make_forecaster(PROFILE, 0.95, training),
                **sim,
            ).run(requests(args.slots, load, args.duration, args.seed))
            out = res.outcomes
            high = [o for o in out if o.priority is Priority.HIGH]
            low = [o for o in out if o.priority is not Priority.HIGH]
            lats = sorted(o.latency for o in out if o.latency is not None)
            print(
                f"{load:>5.2f} {name:<9}{_met(high):>8.1%}{_met(low):>8.1%}{_met(out):>8.1%}"
                f"{sum(o.status == 'rejected' for o in out) / len(out):>7.1%}"
                f"{lats[len(lats) // 2] * 1e3:>7.1f}{res.summary()['pred_mean_rel_err']:>7.1%}"
            )
    return 0


def _met(outcomes: list) -> float:
    return sum(o.status == "met" for o in outcomes) / max(1, len(outcomes))


if __name__ == "__main__":
    sys.exit(main())
