"""Where the predictor's structure pays: SLO capacity and live forecast error of
`coarse` and `predlat` (fine-rls), each with and without the own x co-runner demand
terms (predlat.predict.features.Design, `interact`), and the oracle, on a simulated
device (virtual clock: the figures do not depend on this machine's speed or load).

    python benchmarks/bench_sim_structure.py [--device contended-gpu] [--seeds 0,1,2]
        [--requests 20000] [--quantile 0.95|mean] [--steps 4] [--variants a,b,...]

The default device, `contended-gpu`, is a preset whose contention follows the models'
demands strongly (two memory-bound batches slow each other by about +125%, a
compute-bound co-runner slows a memory-bound batch by about +35%). SLO capacity is
`predlat compare`'s (>= 99% of high-priority and >= 95% of all deadlines met), bracketed
by a sweep of loads and bisected, per seed; the table gives its mean and standard error
over seeds, and the live forecast error (mean relative error of the mean forecast each
dispatched batch was admitted with) at two loads. `coarse` is the gpulet form without
the demand products and `predlat` has them by default; the `*-plain` / `*+x` rows swap.
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import replace

from predlat.experiments.capacity import Slo, find_capacity
from predlat.predict.predictors import CoarsePredictor, FineRlsPredictor, register_predictor
from predlat.scheduling.policies import get_policy
from predlat.sim.arrivals import synthetic_requests
from predlat.sim.cluster import build_cluster
from predlat.sim.device_file import load_device
from predlat.sim.oracle import ORACLE
from predlat.traces.collect import device_capacity

SWEEP = (0.5, 0.8, 1.1, 1.4)
ERROR_LOADS = (0.8, 1.1)


class CoarseWithProducts(CoarsePredictor):
    name = "coarse+x"
    interact_default = True


class FineRlsWithoutProducts(FineRlsPredictor):
    name = "fine-rls-plain"
    interact_default = False


def variants():
    register_predictor(CoarseWithProducts.name, CoarseWithProducts)
    register_predictor(FineRlsWithoutProducts.name, FineRlsWithoutProducts)
    coarse, predlat = get_policy("coarse"), get_policy("predlat")
    return {
        "coarse": coarse,
        "coarse+x": replace(coarse, name="coarse+x", predictor=CoarseWithProducts.name),
        "predlat-plain": replace(
            predlat, name="predlat-plain", predictor=FineRlsWithoutProducts.name
        ),
        "predlat": predlat,
        "oracle": ORACLE,
    }


def run(spec, policy, load: float, seed: int, unit: float, args) -> dict:
    """One run at `load` (a fraction of `unit`, the device's capacity in requests/s)."""
    models = sorted(spec.models)
    sim = build_cluster([spec], 1, policy, seed=seed, quantile=args.quantile)
    reqs = synthetic_requests(
        dict.fromkeys(models, load * unit / len(models)),
        args.requests,
        lambda m: 10 * spec.models[m].latency(1),
        seed=seed,
        hp_frac=0.3,
    )
    stats, _ = sim.run_stream(reqs)
    return stats.summary(sim.busy_slot_s(), sim.slots())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="contended-gpu")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--quantile", default="0.95", help="or 'mean'")
    p.add_argument("--steps", type=int, default=4, help="bisection steps per seed")
    p.add_argument("--variants", default=None, help="comma-separated rows (default: all)")
    args = p.parse_args()
    args.quantile = None if args.quantile == "mean" else float(args.quantile)
    spec = load_device(args.device)
    unit = device_capacity(spec.profile(), sorted(spec.models), spec.slots)
    slo = Slo()
    print(f"{args.device}: load 1 = {unit:.1f} requests/s; quantile {args.quantile or 'mean'}")
    print(f"{'policy':<15}{'capacity req/s':>20}{'live err ' + str(ERROR_LOADS):>26}")
    rows = variants()
    chosen = args.variants.split(",") if args.variants else list(rows)
    unknown = [v for v in chosen if v not in rows]
    if unknown:
        p.error(f"unknown variants {', '.join(unknown)} (choose {', '.join(rows)})")
    for name in chosen:
        policy = rows[name]
        caps, errs = [], {x: [] for x in ERROR_LOADS}
        for seed in (int(s) for s in args.seeds.split(",")):
            seen: dict[float, dict] = {}

            def meets(load: float, seed=seed, seen=seen, policy=policy) -> bool:
                seen[load] = run(spec, policy, load, seed, unit, args)
                return slo.met(seen[load])

            caps.append(find_capacity(meets, SWEEP, args.steps).lo * unit)
            for x in ERROR_LOADS:
                errs[x].append(seen[x].get("pred_mean_rel_err", math.nan))
        se = statistics.stdev(caps) / math.sqrt(len(caps)) if len(caps) > 1 else math.nan
        err = " / ".join(f"{100 * statistics.mean(v):.1f}%" for v in errs.values())
        print(f"{name:<15}{statistics.mean(caps):>12.1f} +- {se:<5.1f}{err:>26}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
