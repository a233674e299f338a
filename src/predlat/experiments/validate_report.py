"""Report of `predlat validate`: simulated against real per policy and load, SLO
capacity, one PNG, the calibrated device (device.json, device.md), and each side's full
`predlat compare` report in real/ and simulated/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt

from predlat.experiments.compare_report import write_outputs
from predlat.experiments.report import md_table, num, pct, write_json
from predlat.sim.calibrate_report import render as render_calibration
from predlat.sim.device_file import parse_device, save_device
from predlat.sim.replay import latency_table, replay


def write_validate_outputs(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cal = results.pop("_calibration", None)
    records = results.pop("_records", [])
    paths = {
        "real": write_outputs(results["real"], out / "real")["report"],
        "simulated": write_outputs(results["simulated"], out / "simulated")["report"],
        "device": save_device(parse_device(results["device"]), out / "device.json"),
        "plot": _plot(results, out / "validate.png"),
    }
    if cal is not None:
        k = cal.spec.slots
        rows = latency_table(records, replay(cal.spec, records, k), k) if records else []
        paths["device_report"] = out / "device.md"
        paths["device_report"].write_text(render_calibration(cal, rows))
    paths["results"] = write_json(out / "results.json", results)
    paths["report"] = out / "report.md"
    paths["report"].write_text(render(results, paths["plot"].name))
    return paths


def render(results: dict[str, Any], plot: str) -> str:
    real, diff = results["real"], results["differences"]
    cfg = real["config"]
    cal = results["calibration"]
    setup = "\n".join(
        [
            f"- models: {', '.join(cfg['models'])}; policies: {', '.join(cfg['policies'])}; "
            f"device: {cfg['device']}, {cfg['slots']} slots x {cfg['threads']} threads "
            f"({real['regime']}); quantile: {real['quantile']}",
            f"- loads: {', '.join(f'{x:g}' for x in cfg['loads'])} x capacity "
            f"{real['capacity_rps']:.1f} requests/s; {cfg['duration_s']:g} s of arrivals per "
            f"run, {pct(cfg['hp_frac'], 0)} high priority, seeds from {cfg['seed']} "
            f"({cfg['repeats']} per load), {cfg['bisect_steps']} bisection steps",
            f"- calibrated on the warm-up history: {cal['batches']} batches; cores: "
            f"{cal['cores'] or 'none'}; noise sigma {cal['noise_sigma']:.3f} + "
            f"{cal['noise_per_corunner']:.3f} per co-runner{_table(cal)} (device.json, "
            "device.md); "
            f"other processes' CPU share meanwhile: {_warmup_foreign(real)}",
            f"- runtime hand-offs the simulated device adds: {_handoff(cal.get('handoff'))}",
            _host_cpu(cal.get("handoff") or {}, results.get("device", {})),
            f"- wall time: real {real['wall_s']:.0f} s, simulated "
            f"{results['simulated']['wall_s']:.1f} s",
        ]
    )
    policy_rows = [
        (
            p,
            num(d["real_capacity_rps"], 1),
            num(d["sim_capacity_rps"], 1),
            _signed(d["d_capacity_pct"], "%"),
            num(d["max_abs_d_hp_met_pp"], 1, " pp"),
            num(d["max_abs_d_met_frac_pp"], 1, " pp"),
            num(d["max_abs_d_p50_ms_pct"], 0, "%"),
            num(d["max_abs_d_p99_ms_pct"], 0, "%"),
        )
        for p, d in diff["by_policy"].items()
    ]
    load_rows = [
        (
            f"{r['load']:g}",
            r["policy"],
            f"{pct(r['real_hp_met'])} / {pct(r['sim_hp_met'])}",
            _signed(r["d_hp_met_pp"], " pp"),
            f"{pct(r['real_met_frac'])} / {pct(r['sim_met_frac'])}",
            _signed(r["d_met_frac_pp"], " pp"),
            f"{num(r['real_p50_ms'], 1)} / {num(r['sim_p50_ms'], 1)}",
            _signed(r["d_p50_ms_pct"], "%"),
            f"{num(r['real_p99_ms'], 1)} / {num(r['sim_p99_ms'], 1)}",
            _signed(r["d_p99_ms_pct"], "%"),
            _foreign(r),
            num(r["real_dispatch_lag_p99_ms"], 1),
        )
        for r in diff["by_load"]
    ]
    parts = [
        "# predlat validate: the calibrated simulator against the real device",
        setup,
        "## Per policy (simulated minus real; the largest difference over the loads)",
        md_table(
            [
                "policy",
                "real SLO capacity req/s",
                "simulated",
                "difference",
                "max |d high-priority met|",
                "max |d all met|",
                "max |d p50|",
                "max |d p99|",
            ],
            policy_rows,
        ),
        *_per_model_section(diff),
        "## Per load (real / simulated)",
        md_table(
            [
                "load",
                "policy",
                "high-priority met",
                "d",
                "all met",
                "d",
                "p50 ms",
                "d",
                "p99 ms",
                "d",
                "real: foreign CPU",
                "real: dispatch lag p99 ms",
            ],
            load_rows,
            "llrrrrrrrrrr",
        ),
        f"![real vs simulated]({plot})",
        "## Method",
        "`predlat compare`'s setup ran once on the real device (profiles, deadlines, the "
        "warm-up history every predictor starts from). A simulated device was calibrated "
        "from that warm-up history (`predlat calibrate`'s fit), with the runtime's "
        "hand-offs (arrival to scheduler, decision to batch start, batch end to "
        "scheduler) fitted from one more real run on a seed no compared run uses (the "
        "warm-up history is collected by another dispatcher). Then the comparison ran on "
        "the real device and on the simulated one with the same config: each run replays "
        "the same seeded arrivals, deadlines and priorities through the same scheduler, "
        "policy, starting predictor and deadline margin. One-at-a-time policies with "
        "another thread count use the profile at that count on the calibrated device. "
        "Differences are simulated minus real: fractions in percentage points, latencies "
        "and capacity in percent of real. Each real run starts from warmed slots (every "
        "model and batch size run once per slot). The simulator models no other "
        f"processes on the machine, and {_handoff_kind(results)}: a real "
        "run during which other processes took more than the profiler's limit of the CPU "
        "is repeated (up to 3 runs, the quietest kept), and the per-load table shows, per "
        "real run, other processes' share of the CPU meanwhile (and the runs made) and "
        "the dispatch lag. Full reports: "
        "[real](real/report.md), [simulated](simulated/report.md).",
    ]
    return "\n\n".join(parts) + "\n"


def _handoff_kind(results: dict[str, Any]) -> str:
    """How this run's simulated device set its hand-offs (the report states what ran)."""
    if "dispatch_table" in results.get("device", {}).get("handoff", {}):
        return "its dispatch and completion hand-offs are drawn from the probe's gaps"
    return "its hand-offs are constants (medians)"


def _warmup_foreign(real: dict[str, Any]) -> str:
    warm = real.get("warmup", {})
    share, tries = pct(warm.get("foreign_cpu_frac"), 0), warm.get("tries") or 1
    return f"{share} (the quietest of {tries} histories)" if tries > 1 else share


def _foreign(row: dict[str, Any]) -> str:
    runs = row.get("real_runs")
    share = pct(row["real_foreign_cpu_frac"], 0)
    return f"{share} ({runs} runs)" if runs and runs > 1 else share


def _signed(value: float | None, suffix: str) -> str:
    return "n/a" if value is None else f"{value:+.1f}{suffix}"


def _plot(results: dict[str, Any], path: Path) -> Path:
    """Four panels: high-priority and all deadlines met, and p99, against load (real
    solid, simulated dashed), and SLO capacity per policy (bars)."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    policies = results["real"]["config"]["policies"]
    colours = {p: f"C{i}" for i, p in enumerate(policies)}
    panels = (
        ("hp_met", "high-priority deadlines met"),
        ("met_frac", "all deadlines met"),
        ("p99_ms", "p99 latency (ms)"),
    )
    for ax, (metric, label) in zip(axes.flat, panels, strict=False):
        for side, style in (("real", "-"), ("simulated", "--")):
            loads = results[side]["loads"]
            keys = sorted(loads, key=float)
            for p in policies:
                ys = [loads[k]["policies"][p].get(metric) for k in keys]
                pts = [(float(k), y) for k, y in zip(keys, ys, strict=True) if y is not None]
                ax.plot(
                    [a for a, _ in pts],
                    [b for _, b in pts],
                    style,
                    marker=".",
                    color=colours[p],
                    label=f"{p} ({side})",
                )
        ax.set_xlabel("load (fraction of device capacity)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, ncol=2)
    ax = axes.flat[3]
    by = results["differences"]["by_policy"]
    x = range(len(policies))
    for off, key, side in (
        (-0.2, "real_capacity_rps", "real"),
        (0.2, "sim_capacity_rps", "simulated"),
    ):
        ax.bar([i + off for i in x], [by[p][key] or 0.0 for p in policies], 0.4, label=side)
    ax.set_xticks(list(x), policies)
    ax.set_ylabel("SLO capacity (requests/s)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle("real (solid) vs calibrated simulator (dashed), same workloads")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _per_model_section(diff: dict[str, Any]) -> list[str]:
    """Per policy and model, the largest latency differences over the loads, and per
    load the p50s: in a mix of models the overall p50 falls between the models', so a
    few requests move it; per model, like is compared with like."""
    rows = [
        (p, model, num(d["max_abs_d_p50_ms_pct"], 0, "%"), num(d["max_abs_d_p99_ms_pct"], 0, "%"))
        for p, by in diff["by_policy"].items()
        for model, d in by.get("by_model", {}).items()
    ]
    if not rows:
        return []
    p50s = [
        (
            f"{r['load']:g}",
            r["policy"],
            model,
            f"{num(m['real_p50_ms'], 1)} / {num(m['sim_p50_ms'], 1)}",
            _signed(m["d_p50_ms_pct"], "%"),
            f"{num(m['real_p99_ms'], 1)} / {num(m['sim_p99_ms'], 1)}",
            _signed(m["d_p99_ms_pct"], "%"),
        )
        for r in diff["by_load"]
        for model, m in r.get("by_model", {}).items()
    ]
    return [
        "## Per model (simulated minus real; the largest difference over the loads)",
        md_table(["policy", "model", "max |d p50|", "max |d p99|"], rows, "llrr"),
        "Per load: p50 and p99 ms, real / simulated.",
        md_table(["load", "policy", "model", "p50 ms", "d", "p99 ms", "d"], p50s, "lllrrrr"),
    ]


def _table(cal: dict[str, Any]) -> str:
    n = cal.get("noise_table_batches") or 0
    return f", drawn instead from a table measured on the hand-off probe's {n} batches" if n else ""


def _handoff(h: dict[str, Any] | None) -> str:
    if not h:
        return "none"
    n = h["samples"]
    return (
        f"arrival {h['arrival_ms']:.2f} ms, dispatch {h['dispatch_ms']:.2f} ms, completion "
        f"{h['completion_ms']:.2f} ms (medians over {n['arrival']}, {n['dispatch']} and "
        f"{n['completion']} gaps of one real run on a seed of its own{_busy(h)}){_drawn(h)}"
    )


def _host_cpu(h: dict[str, Any], device: dict[str, Any]) -> str:
    """The runtime's own CPU on the probe, and whether the simulated batches lose it."""
    ms = h.get("host_cpu_ms_per_batch")
    if ms is None:
        return "- the runtime's own CPU: not measured on the probe run"
    used = (device.get("handoff") or {}).get("host_cpu_s")
    return (
        f"- the runtime's own CPU on that run: {ms:.2f} ms per batch "
        f"({h.get('host_cpu_cores') or 0:.3f} cores); "
        + (
            f"the simulated batches lose it while they hold all {device['handoff']['host_cores']}"
            " cores (--host-cpu)"
            if used
            else "the simulated device does not take it from its batches"
        )
    )


def _busy(h: dict[str, Any]) -> str:
    share = h.get("foreign_cpu_frac")
    if share is None:  # unmeasured
        return ""
    return f"; other processes' CPU share meanwhile: {pct(share, 0)}"


def _drawn(h: dict[str, Any]) -> str:
    """Which hand-offs are drawn from the probe's gaps rather than fixed at the median."""
    drawn = [
        f"{k} (p99 {h[f'{k}_p99_ms']:.2f} ms)"
        for k in ("dispatch", "completion")
        if f"{k}_p99_ms" in h
    ]
    return f"; each batch's {' and '.join(drawn)} drawn from those gaps" if drawn else ""
