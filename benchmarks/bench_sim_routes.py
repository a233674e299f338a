"""The routing rule alone: predlat's route against least-loaded and round-robin on a
simulated cluster, with one heavy and one light model and deadlines tight for both.

This is the scenario of the Ray Serve router comparison (`bench_ray.py`, phase 2) with
the Ray path taken out: on a 2-core machine, Ray's own processes, the client and two
replicas share the cores, and most misses there are requests that reach a replica after
their deadline, whatever the router chose. Here each device is the simulated device
calibrated from this machine (`predlat validate` writes one), cut down to the two models
and one slot per device, as a Ray replica runs them. `least-loaded` (fewest queued plus
running requests) is what Serve's default router does with two replicas: power of two
choices on queue length picks the shorter of both queues.

For each route, over the same seeded workloads (equal rates per model, 30% high
priority, deadlines 10x solo latency at batch 1): SLO capacity (>= 99% of high-priority
and >= 95% of all deadlines met, bisected), and at each load deadlines met and goodput.

    python benchmarks/bench_sim_routes.py [--device results/cpu-2core/validate/device.json]
        [--models vgg,roberta] [--devices 2] [--slots 1] [--loads 0.6,0.8,1.0,1.2]
        [--seeds 0,1] [--requests 8000] [--policy predlat] [--noise-sigma S]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from predlat.experiments.simulate import SimulateConfig, run_simulate
from predlat.sim.cluster import CLUSTER_ROUTES

DEFAULT_DEVICE = Path(__file__).resolve().parent.parent / "results/cpu-2core/validate/device.json"


def two_model_device(
    source: Path, models: list[str], out: Path, noise_sigma: float | None = None
) -> Path:
    """`source` (a device.json) with only `models`, their pairs among themselves kept;
    given `noise_sigma`, its batch-to-batch noise (lognormal sigma) set to that."""
    spec = json.loads(source.read_text())
    if noise_sigma is not None:
        spec["noise"]["sigma"] = noise_sigma
    missing = [m for m in models if m not in spec["models"]]
    if missing:
        raise SystemExit(f"{source} has no model {', '.join(missing)}")
    spec["models"] = {m: spec["models"][m] for m in models}
    pairs = spec.get("pairs", {})
    spec["pairs"] = {
        a: {b: v for b, v in pairs[a].items() if b in models} for a in models if a in pairs
    }
    out.write_text(json.dumps(spec))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", type=Path, default=DEFAULT_DEVICE)
    p.add_argument("--models", default="vgg,roberta")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--loads", default="0.6,0.8,1.0,1.2")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--requests", type=int, default=8000)
    p.add_argument("--policy", default="predlat")
    p.add_argument(
        "--noise-sigma",
        type=float,
        default=None,
        help="the devices' batch-to-batch noise (lognormal sigma; default: the device's). "
        "Larger noise, larger forecast errors: does the rule still win with forecasts as "
        "wrong as the live replicas' (bench_ray.py, phase 2)?",
    )
    args = p.parse_args()
    loads = tuple(float(x) for x in args.loads.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "device.json"
        device = two_model_device(args.device, args.models.split(","), out, args.noise_sigma)
        results = {
            (route, seed): run_simulate(
                SimulateConfig(
                    device=(str(device),),
                    devices=args.devices,
                    slots=args.slots,
                    requests=args.requests,
                    policies=(args.policy,),
                    loads=loads,
                    route=route,
                    seed=seed,
                    bisect_steps=4,
                )
            )
            for route in CLUSTER_ROUTES
            for seed in seeds
        }
    first = next(iter(results.values()))
    deadlines = ", ".join(f"{m} {d:.1f} ms" for m, d in first["deadlines_ms"].items())
    noise = "" if args.noise_sigma is None else f", noise sigma {args.noise_sigma:g}"
    print(
        f"{args.devices} simulated devices x {args.slots} slot ({args.device.name}: "
        f"{args.models}{noise}), policy {args.policy}, seeds {args.seeds}, {args.requests} "
        f"requests per run; deadlines {deadlines}; capacity {first['capacity_rps']:.1f} req/s"
    )
    capacity = {}
    for route in CLUSTER_ROUTES:
        rps = [results[route, s]["slo_capacity"][args.policy]["rps"] for s in seeds]
        capacity[route] = statistics.mean(rps)
        print(
            f"  {route:13s} SLO capacity {capacity[route]:7.1f} req/s  (per seed: "
            + ", ".join(f"{x:.1f}" for x in rps)
            + ")"
        )
    base = capacity["least-loaded"]
    print(f"  predlat / least-loaded: {capacity['predlat'] / base:.2f}x" if base else "")
    print(
        f"  {'load':>5s} {'route':13s} {'hp met':>7s} {'all met':>8s} {'goodput/s':>10s}"
        f" {'forecast err':>13s}"
    )
    keys = ("hp_met", "met_frac", "goodput_rps", "live_forecast_err")
    for load in loads:
        for route in CLUSTER_ROUTES:
            runs = [results[route, s]["loads"][f"{load:g}"]["policies"][args.policy] for s in seeds]
            hp, met, good, err = (statistics.mean(r[k] for r in runs) for k in keys)
            print(f"  {load:5.2f} {route:13s} {hp:7.3f} {met:8.3f} {good:10.1f} {err:13.3f}")
    print("  forecast err: the devices' schedulers' mean relative error of batch forecasts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
