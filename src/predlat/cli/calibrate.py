"""`predlat calibrate`: fit a simulated device (device.json) to real co-location traces."""

from __future__ import annotations

import argparse
from pathlib import Path

from predlat.errors import ConfigError
from predlat.profiling.profile import Profile


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="fit a simulated device (device.json) to real co-location traces",
        description=(
            "Fit the simulated device's law (per-pair slowdowns, time-sharing of cores, "
            "co-location-dependent noise) to traces recorded by `predlat trace` on any "
            "device, and write it as device.json (format: predlat.sim.device_file). Prints "
            "the fit report and writes it beside the output as .md."
        ),
    )
    parser.add_argument(
        "--traces", type=Path, nargs="+", required=True, help="trace .parquet files"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="the device's solo profile (default: profile.json beside the first trace, or "
        "in its parent folder, as `predlat study` lays them out)",
    )
    parser.add_argument("--out", type=Path, required=True, help="device.json to write")
    parser.add_argument("--name", default=None, help="device name (default: the file's stem)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from predlat.sim.calibrate_report import calibrate_files, render
    from predlat.sim.device_file import save_device

    if args.out.is_dir():  # checked before the fit, not when writing after it
        raise ConfigError(f"--out {args.out} is a folder; give a device.json file name")
    folder = args.traces[0].parent
    profile_path = args.profile or next(
        (p for p in (folder / "profile.json", folder.parent / "profile.json") if p.is_file()),
        folder / "profile.json",
    )
    if not profile_path.is_file():
        raise ConfigError(f"no profile at {profile_path}: give --profile FILE")
    profile = Profile.load(profile_path)
    cal, rows = calibrate_files(args.traces, profile, name=args.name or args.out.stem)
    save_device(cal.spec, args.out)
    text = render(cal, rows)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0
