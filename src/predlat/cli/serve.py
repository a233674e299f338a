"""`predlat serve`: an Open Inference Protocol v2 HTTP server on top of the runtime."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

from predlat.cli.common import (
    add_device_options,
    add_models_option,
    add_progress_option,
    add_quantile_option,
    chosen_models,
    positive_float,
)
from predlat.cluster.messages import TRANSPORTS
from predlat.errors import PredlatError, require

POLICY_HELP = "serial, serial-1t, oblivious, coarse or predlat"
# Weight 110 against the loop's 1024 (nice 0): the loop preempts a batch at once.
DEFAULT_COMPUTE_NICE = 10


def deadline_spec(text: str) -> tuple[float | None, dict[str, float]]:
    """'50' (every model) or 'tiny=20,resnet=200' (per model), or both: '100,tiny=20'."""
    everyone: float | None = None
    per_model: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, value = part.rpartition("=")
        try:
            ms = positive_float(value)
        except argparse.ArgumentTypeError as exc:  # name the entry among several
            raise argparse.ArgumentTypeError(f"deadline '{part}' (milliseconds): {exc}") from None
        if name:
            per_model[name.strip()] = ms / 1e3
        else:
            everyone = ms / 1e3
    if everyone is None and not per_model:
        raise argparse.ArgumentTypeError("expected a deadline in milliseconds")
    return everyone, per_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve models over HTTP (Open Inference Protocol v2, as Triton and KServe)",
        description=(
            "Serve models over HTTP with the Open Inference Protocol v2 (JSON and binary "
            "tensors; works with tritonclient.http and curl). Every request goes through "
            "predlat's scheduler: batched across clients, co-located on the device's slots, "
            "answered by its deadline or refused at once. Per-request parameters: 'priority' "
            "(Triton levels: 1 = high, 0 or >= 2 = low), 'deadline_ms', or Triton's "
            "'timeout' (microseconds). Prometheus metrics at /metrics. Stop with Ctrl-C or "
            "SIGTERM: new requests are refused, queued ones finished, then it exits."
        ),
    )
    add_models_option(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help="execution slots (default: 2, or the sum of a model repository's instance_group "
        "counts)",
    )
    parser.add_argument("--policy", default="predlat", help=f"{POLICY_HELP} (default: predlat)")
    add_device_options(parser, "intra-op threads per slot")
    parser.add_argument(
        "--predictor",
        type=Path,
        default=None,
        metavar="FILE",
        help="start the policy's predictor from a `predlat fit` file (fitted against the "
        "same models and machine); it keeps learning online",
    )
    add_quantile_option(parser, "the policy")
    parser.add_argument(
        "--default-deadline-ms",
        type=deadline_spec,
        default=(None, {}),
        metavar="D",
        help=(
            "deadline of requests that name none: '50' for every model, 'tiny=20,resnet=200' "
            "per model (default: 10x the model's solo latency, at least 50 ms)"
        ),
    )
    parser.add_argument(
        "--max-body-mb",
        type=positive_float,
        default=64.0,
        help="largest request body accepted, in MB; larger gets 413 (default: 64)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=1000,
        help="requests waiting in the scheduler; more are refused with 429 (default: 1000)",
    )
    parser.add_argument(
        "--graceful-timeout-s",
        type=positive_float,
        default=30.0,
        help="on shutdown, how long to let requests in flight finish (default: 30)",
    )
    add_progress_option(parser)
    add_door_options(parser)
    add_ray_options(parser)
    parser.set_defaults(func=run)


def add_door_options(parser: argparse.ArgumentParser) -> None:
    """Shedding at the door, late work and decoding."""
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=512,
        help="infer requests between arrival and answer; more get 429 before their body "
        "is read (0: unbounded; default: 512)",
    )
    parser.add_argument(
        "--timeout-action",
        choices=("REJECT", "DELAY"),
        default="REJECT",
        help="late work, as Triton's queue policy: REJECT never starts work forecast to "
        "finish late; DELAY runs it anyway, behind on-time work (default: REJECT; a request "
        "may choose with the 'timeout_action' parameter)",
    )
    parser.add_argument(
        "--model-repository",
        metavar="DIR",
        help="serve a Triton model repository: DIR/<model>/config.pbtxt and "
        "DIR/<model>/<version>/model.onnx (instead of --models)",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=8001,
        help="TCP port of the gRPC front end (Open Inference Protocol v2, as Triton; "
        "-1: off; default: 8001)",
    )
    parser.add_argument(
        "--decode-processes",
        type=int,
        default=1,
        help="worker processes decoding big JSON bodies off the event loop (0: a thread; "
        "default: 1)",
    )
    parser.add_argument(
        "--compute-nice",
        type=int,
        default=DEFAULT_COMPUTE_NICE,
        help="raise the nice value of the compute threads (execution slots, decode "
        "workers) by this much, so the event loop that reads requests and answers "
        f"refusals runs as soon as it wakes (Linux; 0: off; default: {DEFAULT_COMPUTE_NICE})",
    )


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scale-out on Ray Serve (needs: pip install 'predlat[ray]')")
    group.add_argument(
        "--ray",
        action="store_true",
        help="serve through replicas on Ray Serve, routed by predicted latency",
    )
    group.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join, e.g. 'auto' or 'ray://head:10001' (default: start a local one)",
    )
    group.add_argument(
        "--replicas", type=int, default=1, help="replicas, one runtime each (default: 1)"
    )
    group.add_argument(
        "--ray-transport",
        choices=TRANSPORTS,
        default="grpc",
        help="how requests reach the replicas: Serve's gRPC transport, or Ray actor calls"
        " (default: grpc, the faster)",
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "ray", False):
        return _run_ray(args)
    require(args.slots is None or args.slots >= 1, f"--slots must be at least 1, got {args.slots}")
    require(args.threads >= 1, f"--threads must be at least 1, got {args.threads}")
    require(0 <= args.port <= 65535, f"--port must be in 0..65535, got {args.port}")
    require(  # (the OS would take 70000 as 4464)
        -1 <= args.grpc_port <= 65535,
        f"--grpc-port must be in 0..65535 or -1, got {args.grpc_port}",
    )
    require(args.max_queue >= 1, f"--max-queue must be at least 1, got {args.max_queue}")
    require(
        args.predictor is None or args.predictor.is_file(),
        f"--predictor {args.predictor}: no such file",
    )
    require(
        args.models is None or args.model_repository is None,
        "give --models or --model-repository, not both",
    )
    require(args.max_inflight >= 0, f"--max-inflight must be >= 0, got {args.max_inflight}")
    require(
        args.decode_processes >= 0,
        f"--decode-processes must be >= 0, got {args.decode_processes}",
    )
    require(
        0 <= args.compute_nice <= 19,
        f"--compute-nice must be between 0 and 19, got {args.compute_nice}",
    )

    # Imported here so `predlat --help` stays fast.
    from predlat.models import resolve_models
    from predlat.runtime import build_runtime
    from predlat.runtime.build import warm_up
    from predlat.scheduling.policies import parse_quantile
    from predlat.serving.admission import DoorPolicy
    from predlat.serving.app import ServerConfig, create_app
    from predlat.serving.backlog import BacklogForecast
    from predlat.serving.server import bind_socket, default_deadlines, run_server

    repository = None
    if args.model_repository is not None:
        from predlat.serving.repository import scan_repository

        repository = scan_repository(Path(args.model_repository))
        specs = [m.spec() for m in repository]
        names: list = list(specs)
    else:
        names = chosen_models(args)
        specs = resolve_models(names)
    if args.slots is None:
        args.slots = sum(m.settings.instance_count for m in repository) if repository else 2
    batch_caps = [m.settings.max_batch_size for m in repository or []]
    max_batch = max(batch_caps) if batch_caps and all(batch_caps) else 8
    everyone, per_model = args.default_deadline_ms
    sock = bind_socket(args.host, args.port)  # fail fast, before minutes of profiling
    try:
        runtime, profile = build_runtime(
            names,
            slots=args.slots,
            policy=args.policy,
            threads=args.threads,
            device=args.device,
            max_queue=args.max_queue,
            progress=not args.no_progress,
            quantile=parse_quantile(args.quantile),
            predictor_file=args.predictor,
            max_batch=max_batch,
        )
        # A slot's first batch of each shape is slow (ONNX Runtime plans it): pay for that
        # now rather than in the first requests' latency, as Triton's model_warmup does.
        if not args.no_progress:
            print("predlat serve: warming every slot at every batch size", flush=True)
        caps = {m.name: m.settings.max_batch_size for m in repository or []}
        for model in runtime.models:
            warm_up(runtime.device, [model], min(caps.get(model) or max_batch, max_batch))
        config = ServerConfig(
            default_deadline_s=default_deadlines(profile, specs, per_model, everyone),
            max_body_bytes=int(args.max_body_mb * 2**20),
            drain_timeout_s=args.graceful_timeout_s,
            door=DoorPolicy(max_inflight=args.max_inflight, default_action=args.timeout_action),
            decode_processes=args.decode_processes,
            compute_nice=args.compute_nice,
            models={m.name: m.settings for m in repository or []},
            repository=Path(args.model_repository) if repository else None,
            versions={m.name: m.version for m in repository or []},
        )
    except BaseException:
        sock.close()
        raise
    # The app starts the runtime on the server's event loop (no thread hop per request)
    # and drains it at shutdown.
    # The door forecasts from the scheduler's running batches (read on the loop that
    # hosts the runtime) and learns slowdowns from finished batches.
    forecast = BacklogForecast(
        profile.solo_latency, runtime.scheduler.running, runtime.now, args.slots, max_batch
    )
    runtime.add_batch_listener(forecast.on_batch)
    app = create_app(runtime, specs, config, forecast=forecast)
    host, port = sock.getsockname()[:2]
    deadlines = ", ".join(f"{s.name} {config.deadline_for(s.name) * 1e3:.0f} ms" for s in specs)
    print(
        f"predlat serve: {', '.join(s.name for s in specs)} on http://{host}:{port} "
        f"({args.policy}, {args.slots} slots; default deadlines: {deadlines})",
        flush=True,
    )
    try:
        attach_grpc(app, args.host, args.grpc_port)
        stopped_by = run_server(app, sock, graceful_timeout_s=args.graceful_timeout_s)
    finally:  # a no-op after a normal shutdown; drains if the app could not (forced exit)
        runtime.stop(drain=True, timeout=args.graceful_timeout_s)
        sock.close()
    why = f" on {signal.Signals(stopped_by).name}" if stopped_by else ""
    print(f"predlat serve: stopped{why}; queued work drained", flush=True)
    return 0


def _run_ray(args: argparse.Namespace) -> int:
    if args.address is None:  # a local instance: loopback only
        from predlat.cluster.local import use_loopback

        use_loopback()
    try:
        import ray  # noqa: F401
    except ImportError:
        raise PredlatError("--ray needs Ray Serve: pip install 'predlat[ray]'") from None
    from predlat.cluster.serve import run_ray

    return run_ray(args)


def attach_grpc(app: Any, host: str, port: int) -> None:
    """The gRPC front end beside HTTP, on its event loop (nothing when port is -1)."""
    if port < 0:
        return
    from predlat.serving.grpc_server import GrpcServer
    from predlat.serving.server import bind_socket

    if port > 0:  # a taken port is a one-line error now, not a failed start-up later
        bind_socket(host, port).close()

    def announce(address: str) -> None:
        print(f"predlat serve: gRPC on {address}", flush=True)

    GrpcServer(app.state.service, host, port, announce).attach()
