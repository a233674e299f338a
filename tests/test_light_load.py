"""Light load on a simulated 2-slot device: where co-location buys nothing, the
high-priority slot reserve must cost nothing either."""

from __future__ import annotations

from predlat.devices.simulated import InterferenceLaw
from predlat.scheduling import requests_from_arrivals
from predlat.sim import ZOO_LIKE, build_simulation, synthetic_profile
from predlat.workload.arrivals import open_loop_workload

MODELS = {m: ZOO_LIKE[m] for m in ("resnet", "roberta", "vit", "convnext")}
PROFILE = synthetic_profile(MODELS)
LAW = InterferenceLaw(base=0.05, compute=0.25, memory=0.35, noise_sigma=0.3)


def run(policy: str, seed: int) -> dict[str, float]:
    # 2 slots at 0.3 of their solo capacity (mid-size batches), 30% high priority,
    # deadlines 10 x solo at batch 1 (as `predlat compare` sets them).
    names = sorted(MODELS)
    per_request = sum(PROFILE.solo_latency(m, 4) / 4 for m in names) / len(names)
    rate = 0.3 * 2 / per_request / len(names)
    sim = build_simulation(PROFILE, names, policy=policy, slots=2, law=LAW, seed=seed)
    arrivals = open_loop_workload(dict.fromkeys(names, rate), 6.0, seed=seed, hp_frac=0.3)
    requests = requests_from_arrivals(arrivals, lambda m: 10 * PROFILE.solo_latency(m, 1))
    outcomes = sim.run(requests).outcomes
    low = [o for o in outcomes if o.priority != 0]
    return {
        "rejected": sum(o.status == "rejected" for o in outcomes),
        "missed": sum(o.status == "missed" for o in outcomes),
        "low_met": sum(o.status == "met" for o in low) / len(low),
    }


def test_light_load_serves_every_request_on_time() -> None:
    # The reserved slot used to stay idle while high-priority requests kept arriving,
    # so low-priority work queued behind one slot and expired (9 of about 1,150
    # requests rejected over these seeds; now 1, an EDF casualty a heavy-tailed batch
    # can cause under any policy).
    ours = [run("predlat", seed) for seed in (0, 2, 3)]
    theirs = [run("coarse", seed) for seed in (0, 2, 3)]
    assert sum(r["rejected"] for r in ours) <= 1, ours
    assert all(r["low_met"] >= 0.995 for r in ours), ours
    assert sum(r["rejected"] + r["missed"] for r in ours) <= 1 + sum(
        r["rejected"] + r["missed"] for r in theirs
    ), (ours, theirs)
