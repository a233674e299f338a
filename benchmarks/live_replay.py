"""Live forecast error, offline: record compare runs once, replay them through Forecaster.

    record OUT.pkl   run `coarse` and `predlat` on the real device (compare's setup and
                     runner) at --loads and --seeds; pickle the profile, the warm-up
                     history and every run's (finished batch, dispatch) stream
    replay IN.pkl    feed each recorded stream, in event order, to a fresh Forecaster per
                     predictor (fitted on the warm-up history as compare does) and print
                     its live forecast error (as compare computes it) per load

A replay keeps the recorded dispatch decisions whatever the predictor: it measures the
forecasts, not the schedules they would have led to. It runs in seconds, so forecaster
and predictor changes can be judged before a device run confirms them. Other processes'
CPU share during each recorded run is kept and printed: on a shared machine it, more
than the predictor, is often what the error measures.
"""

from __future__ import annotations

import argparse
import copy
import pickle
from collections import defaultdict
from dataclasses import replace

import numpy as np

from predlat.experiments.compare import prepare, quick_config
from predlat.experiments.compare_runs import DeviceRunner, RunSpec, live_forecast
from predlat.predict.forecast import Forecaster, RunningBatch
from predlat.predict.predictors import make_predictor


def record(args: argparse.Namespace) -> None:
    config = quick_config(
        policies=("coarse", "predlat"),
        loads=tuple(args.loads),
        duration_s=args.duration,
        train_s=args.train,
        slots=args.slots,
    ).resolved()
    setup = prepare(config)
    runner = DeviceRunner(config, setup)
    runs = []
    for seed in args.seeds:
        for load in args.loads:
            for name in ("coarse", "predlat"):
                captured = []
                metrics = _run_capturing(runner, config, name, load, seed, captured)
                print(
                    f"load {load} seed {seed} {name}: live err "
                    f"{metrics['live_forecast_err']:.3f}, others' CPU "
                    f"{metrics['foreign_cpu_frac']:.2f}"
                )
                runs.append(
                    {
                        "policy": name,
                        "load": load,
                        "seed": seed,
                        "foreign_cpu_frac": metrics["foreign_cpu_frac"],
                        "batches": captured,
                    }
                )
    blob = {"profile": setup.profile, "history": setup.records, "runs": runs}
    with open(args.path, "wb") as fh:
        pickle.dump(blob, fh)


def _run_capturing(runner, config, name, load, seed, captured) -> dict[str, float]:
    """One device run whose (record, dispatch) stream lands in `captured`."""
    import predlat.experiments.compare_runs as cr

    original = cr.live_forecast

    def grab(batches):
        captured.extend(batches)
        return original(batches)

    cr.live_forecast = grab
    try:
        result = runner(RunSpec(config.policy(name), load, seed))
    finally:
        cr.live_forecast = original
    return result.metrics


def replay_stream(forecaster: Forecaster, batches) -> list[tuple]:
    """The recorded stream through `forecaster`: a forecast at each decision (the batch
    as the only candidate), dispatch, then release and learn at each end. Returns
    (record, replayed dispatch) pairs for `live_forecast`."""
    events = []
    for rec, d in batches:
        events.append((d.decided_at, 1, rec, d))
        events.append((rec.end, 0, rec, d))
    events.sort(key=lambda e: (e[0], e[1]))
    out = []
    for now, kind, rec, d in events:
        if kind == 1:
            batch = RunningBatch(rec.batch_id, rec.model, rec.batch_size, now)
            fc = forecaster.forecast(now, (batch,))[rec.batch_id]
            forecaster.on_dispatch(batch, fc.mean - now)
            out.append((rec, replace(d, predicted_end=fc.quantile, predicted_mean_end=fc.mean)))
        else:
            forecaster.learn(rec, forecaster.release(rec))
    return out


# (label, predictor, predictor options, forecaster options): before/after each change.
VARIANTS = (
    ("coarse", "coarse", {}, {"correct": False}),
    ("coarse+corr", "coarse", {}, {}),
    ("fine", "fine-rls", {"prior": 0.0}, {"correct": False}),
    ("fine+prior", "fine-rls", {}, {"correct": False}),
    ("fine+prior+corr", "fine-rls", {}, {}),
    ("fine+prior+corr-fill", "fine-rls", {}, {"adapt_fill": False}),
)


def replay(args: argparse.Namespace) -> None:
    with open(args.path, "rb") as fh:
        blob = pickle.load(fh)
    profile, history = blob["profile"], blob["history"]
    fitted = {
        label: make_predictor(name, profile, **options).fit(history)
        for label, name, options, _ in VARIANTS
    }
    table: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for run in blob["runs"]:
        key = (run["load"], run["policy"])
        recorded = live_forecast(run["batches"])
        table[(*key, "recorded")].append(
            (recorded["live_forecast_err"], recorded["planned_end_exceeded"])
        )
        for label, _, _, fc_options in VARIANTS:
            predictor = copy.deepcopy(fitted[label], {id(profile): profile})
            fc = Forecaster(predictor, profile, quantile=args.quantile, **fc_options)
            m = live_forecast(replay_stream(fc, run["batches"]))
            table[(*key, label)].append((m["live_forecast_err"], m["planned_end_exceeded"]))
    print("load  stream   variant               live_err  >planned")
    foreign = [r.get("foreign_cpu_frac", np.nan) for r in blob["runs"]]
    print("others' CPU share per run:", ", ".join(f"{f:.2f}" for f in foreign))
    for key in sorted(table):
        err, over = np.array(table[key]).mean(axis=0)
        print(f"{key[0]:4}  {key[1]:8} {key[2]:20} {err:8.3f} {over:8.3f}")
    pairs = (("coarse", "fine"), ("coarse+corr", "fine+prior+corr"))
    for load in sorted({k[0] for k in table}):
        for c, f in pairs:
            ratio = np.mean(
                [
                    np.mean([e[0] for e in table[(load, stream, f)]])
                    / np.mean([e[0] for e in table[(load, stream, c)]])
                    for stream in ("coarse", "predlat")
                ]
            )
            print(f"load {load}: {f} / {c} (mean over both streams): {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("path")
    rec.add_argument("--loads", type=float, nargs="+", default=[0.7, 1.0])
    rec.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    rec.add_argument("--duration", type=float, default=6.0)
    rec.add_argument("--train", type=float, default=30.0)
    rec.add_argument("--slots", type=int, default=None, help="default: the spatial regime")
    rep = sub.add_parser("replay")
    rep.add_argument("path")
    rep.add_argument("--quantile", type=float, default=0.95)
    args = parser.parse_args()
    record(args) if args.cmd == "record" else replay(args)


if __name__ == "__main__":
    main()
