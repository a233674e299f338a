"""Does the serving host's own CPU explain the simulator's error? One set of real runs
(`predlat validate`'s: profiles, warm-up history, hand-off probe, then every policy and
load on the real device), and the simulated side twice on the same calibration: without
the host's CPU (validate's default) and with the probe's figure taken from the batches
(`predlat validate --host-cpu`), plus half and twice that figure. Prints, per variant
and policy, simulated minus real: the largest |d| over the loads of deadlines met (pp)
and of p99 latency (%), and the SLO capacity (%); then per load the d of deadlines met.

    python benchmarks/bench_validate_host.py [--quick] [--out results.json]

Without --quick: validate's full configuration (about 12 minutes here); --quick: its
quick one with two seeds per load (about 5). The real runs are what the machine did
then: run it on a quiet machine (the probe's other-CPU share is printed).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from predlat.devices.base import host_cores
from predlat.experiments.compare import CompareConfig, prepare, run_compare
from predlat.experiments.compare_runs import DeviceRunner
from predlat.experiments.validate import (
    QuietRunner,
    SimRunner,
    _profiles,
    differences,
    quick_validate_config,
    run_validate,
)
from predlat.profiling.cpu_meter import foreign_cpu_limit
from predlat.sim.calibrate import rescaled
from predlat.sim.handoff import with_host_cpu

SCALES = {"none": 0.0, "half": 0.5, "probe": 1.0, "double": 2.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="write the differences here (JSON)")
    args = p.parse_args()
    if args.quick:
        config = quick_validate_config(loads=(0.3, 0.6, 0.9, 1.1), repeats=2, bisect_steps=1)
    else:
        config = CompareConfig(loads=(0.25, 0.5, 0.75, 1.0))
    config = config.resolved()
    setup = prepare(config, show_profiling=True)
    real_runner = QuietRunner(DeviceRunner(config, setup), foreign_cpu_limit())
    # validate itself (its default: no host CPU), then the other variants' simulated
    # side on its calibration and against its real runs
    base = run_validate(config, setup=setup, real_runner=real_runner)
    real, cal, probe = base["real"], base["_calibration"], base["calibration"]["handoff"]
    ms = probe["host_cpu_ms_per_batch"]
    if ms is None:
        raise SystemExit("the probe could not tell the host's CPU apart (intra-op threads?)")
    print(
        f"probe: host CPU {ms:.3f} ms per batch, {probe['host_cpu_cores']:.3f} cores;"
        f" other processes {probe['foreign_cpu_frac']:.1%}",
        flush=True,
    )
    profile_for = _profiles(config)
    cores = min(config.slots, host_cores())
    found = {"none": base["differences"]}
    for name, scale in SCALES.items():
        if not scale:
            continue
        spec = with_host_cpu(cal.spec, ms * scale, cores)

        def other(threads: int, spec=spec):
            profile = profile_for(threads)
            return rescaled(replace(cal, spec=spec), profile, slots=1), profile

        sim = run_compare(config, None, setup=setup, runner=SimRunner(config, setup, spec, other))
        found[name] = differences(real, sim, real_runner.runs)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"probe_host_cpu_ms_per_batch": ms, "differences": found}, f, indent=1)
    for name, scale in SCALES.items():
        print(f"{name} ({ms * scale:.3f} ms per batch): simulated minus real")
        for policy, row in found[name]["by_policy"].items():
            print(
                f"  {policy:10s} max |d all met| {_num(row['max_abs_d_met_frac_pp'])} pp, "
                f"max |d p99| {_num(row['max_abs_d_p99_ms_pct'])}%, "
                f"SLO capacity {_num(row['d_capacity_pct'], '+')}%",
                flush=True,
            )
    print("d all met (pp) per load and policy: " + ", ".join(SCALES))
    rows = {n: {(r["load"], r["policy"]): r for r in d["by_load"]} for n, d in found.items()}
    for key in sorted(rows["none"]):
        real_met = rows["none"][key]["real_met_frac"]
        print(
            f"  {key[0]:5.2f} {key[1]:10s} real {real_met:.3f}  "
            + "  ".join(_num(rows[n][key]["d_met_frac_pp"], "+") for n in SCALES)
        )
    return 0


def _num(value: float | None, sign: str = "") -> str:
    return "  n/a" if value is None else f"{value:{sign}5.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
