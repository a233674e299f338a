"""Decision cost of the scheduler: microseconds per scheduling event.

Six models, four slots, about 1,000 queued requests: a simulated device is kept in
overload (arrivals faster than it can serve, deadlines from tight to loose, 30% high
priority) so the queue stays full, and every call into the scheduler (arrival, batch
end, timer) is timed. The forecaster is the real one (`predlat.predict.Forecaster`) with
the policy's predictor (fine-rls for `predlat`), started from the solo prior and learning
online as it goes. A completion's decisions come before what it teaches is learned (the
driver calls `Scheduler.learn` once the decisions are out), so learning is timed apart:
the "learning" row, not part of "all"; "completion+learning" and "all+learning" count
each completion's learning into it.

    python benchmarks/bench_scheduler.py [--policy predlat] [--events 20000]
        [--profile profile.json] [--clock wall|cpu] [--gc-young 10000]

The garbage collector runs as the runtime sets it (predlat.runtime.gc_policy: what is
alive at start frozen, a higher young-generation threshold), and the number of its passes
during the run is printed: a pass lands on whichever event allocates past the threshold,
so it shows in the tails. On a machine shared with other work, `--clock cpu` times by
this thread's CPU time, which time slices given to other processes do not inflate.
A machine probe (a fixed piece of interpreter work, timed before and after the run) shows
whether a run fell in a slow window of a shared machine, which inflates every event alike.

Without --profile the six models get zoo-like synthetic costs, so the benchmark needs
no measurement of the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from machine_probe import machine_probe_ms
from predlat.profiling.profile import Profile
from predlat.runtime.gc_policy import DEFAULT_YOUNG, GcPolicy
from predlat.scheduling import (
    POLICY_NAMES,
    Dispatch,
    FixedSlowdownForecaster,
    Priority,
    Reject,
    Request,
    Scheduler,
    SchedulerConfig,
)
from predlat.sim import ZOO_LIKE, build_simulation, synthetic_profile


class TimedScheduler:
    """Forwards to a scheduler and records how long each event call takes, from the
    moment the queue first holds `warm_queue` requests."""

    def __init__(self, inner: Scheduler, warm_queue: int, clock=time.perf_counter_ns) -> None:
        self.inner = inner
        self.clock = clock
        self.warm_queue = warm_queue
        self.warm = False
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.forecasts: dict[str, list[int]] = defaultdict(list)  # per event, by kind
        self.digest = DecisionDigest()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _timed(self, kind: str, now: float | None, fn, *args):
        self.warm = self.warm or self.inner.queued() >= self.warm_queue
        f0 = self.inner.stats.forecasts
        t0 = self.clock()
        out = fn(*args)
        if self.warm:
            self.samples[kind].append((self.clock() - t0) / 1e3)
            self.forecasts[kind].append(self.inner.stats.forecasts - f0)
        if now is not None:
            self.digest.add(now, out)
        return out

    def on_arrival(self, request, now, dispatch=True):
        return self._timed("arrival", now, self.inner.on_arrival, request, now, dispatch)

    def on_complete(self, record, now, ok=True, dispatch=True):
        return self._timed("completion", now, self.inner.on_complete, record, now, ok, dispatch)

    def on_tick(self, now):
        return self._timed("timer", now, self.inner.on_tick, now)

    def learn(self):
        # Not a decision: the driver calls it once the decisions are carried out. Timed
        # when it learned something (it waits while a round cut short is not over).
        learned = self.inner.stats.learned
        warm, t0 = self.warm, self.clock()
        out = self.inner.learn()
        if warm and self.inner.stats.learned > learned:
            self.samples["learning"].append((self.clock() - t0) / 1e3)
            self.forecasts["learning"].append(0)
        return out


class DecisionDigest:
    """SHA-256 of the decision stream (every dispatch and rejection with the time it was
    decided; not which kind of event decided it), and apart of the forecasts the
    dispatches carry: two runs decided alike if the first matches; the second shows
    whether any forecast moved at all."""

    def __init__(self) -> None:
        self.decisions = hashlib.sha256()
        self.forecasts = hashlib.sha256()
        self.dispatches = 0
        self.rejects = 0

    def add(self, now: float, out: list) -> None:
        for d in out:
            if isinstance(d, Dispatch):
                self.dispatches += 1
                line = f"{now!r} D {d.batch_id} {d.slot} {d.model} {d.request_ids} {d.batch_size}"
                self.forecasts.update(f"{d.predicted_end!r} {d.predicted_mean_end!r}\n".encode())
            elif isinstance(d, Reject):
                self.rejects += 1
                line = f"{now!r} R {d.request_id} {d.kind.value}"
            else:
                continue
            self.decisions.update((line + "\n").encode())

    def report(self) -> str:
        return (
            f"decision digest {self.decisions.hexdigest()[:16]} "
            f"({self.dispatches} dispatches, {self.rejects} rejections); "
            f"forecast digest {self.forecasts.hexdigest()[:16]}"
        )


def print_row(name: str, us: np.ndarray, note: str = "", forecasts: list[int] = ()) -> None:
    """One line of the table: count, median, p99 and max microseconds, and the p99 and
    max of forecasts per event (the main cost of a decision; unlike the times, not
    disturbed by other load on the machine)."""
    f = np.asarray(forecasts or [0])
    print(
        f"{name:<20}{len(us):>8}{np.median(us):>12.1f}{np.percentile(us, 99):>10.1f}"
        f"{us.max():>10.1f}{np.percentile(f, 99):>10.0f}{f.max():>8}"
        + (f"   ({note})" if note else "")
    )


def gc_report(passes: tuple[int, ...], young: int) -> str:
    return (
        f"garbage collector: {sum(passes)} passes during the run"
        f" (young, middle, old: {', '.join(map(str, passes))});"
        f" young threshold {young or 'default'}"
    )


def workload(profile: Profile, n: int, rate: float, seed: int) -> list[Request]:
    rng = random.Random(seed)
    models = list(profile.models)
    out, t = [], 0.0
    for rid in range(n):
        t += rng.expovariate(rate)
        model = rng.choice(models)
        slack = math.exp(rng.uniform(math.log(3.0), math.log(2000.0)))
        high = rng.random() < 0.3
        out.append(
            Request(
                rid,
                model,
                t,
                t + slack * profile.solo_latency(model, 1),
                Priority.HIGH if high else Priority.LOW,
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="predlat", choices=POLICY_NAMES)
    parser.add_argument("--events", type=int, default=20_000, help="timed events")
    parser.add_argument("--queued", type=int, default=1000, help="queue size to hold")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--profile", type=Path, help="a profile.json instead of synthetic costs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--load", type=float, default=3.0, help="arrival rate over the device's capacity"
    )
    parser.add_argument(
        "--max-forecasts",
        type=int,
        default=SchedulerConfig.max_forecasts,
        help="forecasts one event may spend before yielding to a timer (0: no limit)",
    )
    parser.add_argument(
        "--fixed",
        action="store_true",
        help="a fixed-slowdown forecaster instead of the real one: the scheduler's own cost",
    )
    parser.add_argument(
        "--gc-young",
        type=int,
        default=DEFAULT_YOUNG,
        help="young-generation threshold of the collector during the run, as the runtime"
        " sets it (0: leave CPython's)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time events on the wall clock, or by this thread's CPU time (which other"
        " processes on a busy machine do not inflate; garbage collection still counts)",
    )
    args = parser.parse_args(argv)

    profile = Profile.load(args.profile) if args.profile else synthetic_profile(ZOO_LIKE)
    models = list(profile.models)
    sim = build_simulation(
        profile,
        models,
        policy=args.policy,
        slots=args.slots,
        seed=args.seed,
        config=SchedulerConfig(max_queue=args.queued, max_forecasts=args.max_forecasts),
        forecaster=(lambda d: FixedSlowdownForecaster(profile.solo_latency, 0.3, 1.2))
        if args.fixed
        else None,
    )
    clock = time.thread_time_ns if args.clock == "cpu" else time.perf_counter_ns
    timed = TimedScheduler(sim.schedulers[0], int(0.95 * args.queued), clock)
    sim.schedulers[0] = timed  # type: ignore[assignment]

    # Capacity is roughly slots / mean solo latency; arrive at 3x that to stay full.
    mean_solo = float(np.mean([profile.solo_latency(m, 1) for m in models]))
    rate = args.load * args.slots / mean_solo
    requests = workload(profile, args.events + 4 * args.queued, rate, args.seed)
    # As the runtime does at start: what is alive now (profile, predictor, the workload)
    # leaves the collector's reach, so its passes scan only what scheduling allocates,
    # and they come as rarely as the runtime lets them.
    probe_before = machine_probe_ms()
    gc_applied = GcPolicy(young=args.gc_young or None).apply()
    result = sim.run(requests)
    gc_passes = gc_applied.passes()
    gc_applied.close()
    probe_after = machine_probe_ms()

    inner, samples = timed.inner, timed.samples
    every = [v for kind, vs in samples.items() if kind != "learning" for v in vs]
    print(
        f"bench_scheduler: policy {args.policy}, {len(models)} models, {args.slots} slots, "
        f"queue held near {args.queued}; {args.clock} clock"
    )
    print(
        f"machine probe (fixed interpreter work; higher: a slower window): "
        f"{probe_before:.3f} ms before, {probe_after:.3f} ms after"
    )
    print(
        f"forecaster: {type(inner.forecaster).__module__}.{type(inner.forecaster).__name__}"
        f" (predictor {getattr(getattr(inner.forecaster, 'predictor', None), 'name', 'none')})"
    )
    print(
        f"{len(every)} timed events over {result.events} simulated; "
        f"{inner.stats.forecasts / max(1, inner.stats.arrivals + inner.stats.finished):.2f}"
        " forecasts per event"
    )
    print(
        f"{'event':<20}{'count':>8}{'median_us':>12}{'p99_us':>10}{'max_us':>10}"
        f"{'p99_fc':>10}{'max_fc':>8}"
    )
    for kind in ("arrival", "completion", "timer"):
        if samples.get(kind):
            print_row(kind, np.asarray(samples[kind]), forecasts=timed.forecasts[kind])
    if not every:  # the queue never filled (a light --load): nothing was timed
        print(gc_report(gc_passes, args.gc_young))
        print(timed.digest.report())
        return 0
    v = np.asarray(every)
    p99 = float(np.percentile(v, 99))
    every_fc = [n for kind, ns in timed.forecasts.items() if kind != "learning" for n in ns]
    print_row("all", v, forecasts=every_fc)
    learning = np.asarray(samples.get("learning", []))
    if len(learning):
        print_row("learning", learning, "after the decision, off its path; not in 'all'")
        # For comparison: each completion's learning counted into its event, as if it
        # were learned before deciding (the i-th learning follows the i-th completion).
        done = np.asarray(samples["completion"])
        n = min(len(done), len(learning))
        others = [
            np.asarray(vs) for k, vs in samples.items() if k not in ("learning", "completion")
        ]
        with_learning = done[:n] + learning[:n]
        print_row(
            "completion+learning",
            with_learning,
            "each completion with its learning",
            forecasts=timed.forecasts["completion"][:n],
        )
        joined = np.concatenate([*others, with_learning])
        print_row(
            "all+learning", joined, "learning counted into its completion", forecasts=every_fc
        )
    print(f"p99 over all events: {p99:.1f} us")
    print(gc_report(gc_passes, args.gc_young))
    print(timed.digest.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
