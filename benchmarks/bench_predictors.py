"""Cost of predicting and learning, per predictor, on a synthetic profile.

For every predictor: microseconds per posterior prediction (`predict` from a real
timeline), per update (`learn_one`), and per `Forecaster.forecast` with 4 running batches
and 1 candidate; median and p99 over many calls. Prints a table and one JSON line.

    python benchmarks/bench_predictors.py [--calls 20000] [--names fine-rls,coarse]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from predlat.predict import PREDICTOR_NAMES, Forecaster, RunningBatch, make_predictor
from predlat.predict.synthetic import SlowdownLaw, simulate_trace, synthetic_profile


def timed(fn: Callable[[int], object], calls: int) -> tuple[float, float]:
    """(median, p99) in microseconds of fn(i) over `calls` calls."""
    clock = time.perf_counter_ns
    samples = []
    for i in range(calls):
        t0 = clock()
        fn(i)
        samples.append(clock() - t0)
    samples.sort()
    return statistics.median(samples) / 1e3, samples[int(0.99 * (len(samples) - 1))] / 1e3


def bench(name: str, calls: int, profile, train, stream) -> dict[str, float]:
    predictor = make_predictor(name, profile).fit(train)
    n = len(stream)
    out = {}
    out["predict_us"], out["predict_p99_us"] = timed(
        lambda i: predictor.predict(stream[i % n]), calls
    )
    out["learn_us"], out["learn_p99_us"] = timed(
        lambda i: predictor.learn_one(stream[i % n]), calls
    )
    # A device with 4 batches running (with some history), asked about one more.
    forecaster = Forecaster(predictor, profile)
    running = [r for r in stream if r.start > stream[len(stream) // 2].end][:4]
    for r in stream[: len(stream) // 2]:
        forecaster.on_dispatch(RunningBatch(r.batch_id, r.model, r.batch_size, r.start), 0.0)
        forecaster.on_complete(r)
    for r in running:
        forecaster.on_dispatch(RunningBatch(r.batch_id, r.model, r.batch_size, r.start), 0.0)
    now = max(r.start for r in running) + 1e-4
    models = list(profile.models)
    candidates = [
        (RunningBatch(-1 - k, models[k % len(models)], 1 + k % 8, now),) for k in range(16)
    ]
    out["forecast_us"], out["forecast_p99_us"] = timed(
        lambda i: forecaster.forecast(now, candidates[i % 16]), calls
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--names", default=",".join(PREDICTOR_NAMES))
    args = parser.parse_args()
    profile = synthetic_profile(num_models=6)
    law = SlowdownLaw(memory_x=0.1, count_sq=0.03)
    trace = simulate_trace(profile, law, slots=4, load=0.8, num_batches=3000, seed=0, noise_cv=0.05)
    train, stream = trace[:2000], trace[2000:]
    results = {}
    header = f"{'predictor':<13}{'predict':>16}{'learn_one':>16}{'forecast(4+1)':>18}"
    print(
        header + "\n" + f"{'':<13}{'median / p99 us':>16}{'median / p99 us':>16}"
        f"{'median / p99 us':>18}"
    )
    for name in args.names.split(","):
        r = bench(name, args.calls, profile, train, stream)
        results[name] = {k: round(v, 2) for k, v in r.items()}
        print(
            f"{name:<13}{r['predict_us']:>8.1f} /{r['predict_p99_us']:>6.1f}"
            f"{r['learn_us']:>9.1f} /{r['learn_p99_us']:>6.1f}"
            f"{r['forecast_us']:>11.1f} /{r['forecast_p99_us']:>6.1f}"
        )
    print(json.dumps({"benchmark": "predictors", "calls": args.calls, "results": results}))


if __name__ == "__main__":
    main()
