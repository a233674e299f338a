"""`predlat serve --ray`: the same v2 HTTP front door, backed by replicas on Ray Serve.

Starts a local Ray instance, or joins a cluster (`--address`), deploys one predlat
runtime per replica (a CPU slice here; `num_gpus=1` per replica on GPU machines), and
serves the front door from this process, where the predicting router runs.
"""

from __future__ import annotations

import argparse
import os
import signal

from predlat.errors import require


def run_ray(args: argparse.Namespace) -> int:
    require(args.replicas >= 1, f"--replicas must be at least 1, got {args.replicas}")
    import ray
    from ray import serve

    from predlat.cluster.deployment import APP_NAME, ClusterConfig, deploy
    from predlat.cluster.frontdoor import ClusterRuntime
    from predlat.cluster.replica import ReplicaConfig
    from predlat.devices.factory import describe_device
    from predlat.models import resolve_models
    from predlat.models.zoo import ZOO_NAMES
    from predlat.profiling.profiler import load_or_profile
    from predlat.runtime.build import BATCH_SIZES, REPEATS
    from predlat.serving.app import ServerConfig, create_app
    from predlat.serving.server import bind_socket, default_deadlines, run_server

    names = list(args.models) if args.models is not None else list(ZOO_NAMES)
    specs = resolve_models(names)
    everyone, per_model = args.default_deadline_ms
    sock = bind_socket(args.host, args.port)
    device = args.device
    gpu = describe_device(device).accelerator
    args.slots = args.slots or 1  # a replica is one slot unless told otherwise
    try:
        # Profile once here (cached per machine) so replicas on this host start fast.
        profile = load_or_profile(
            specs,
            BATCH_SIZES,
            REPEATS,
            intra_op_threads=args.threads,
            device=device,
            progress=not args.no_progress,
        )
        config = ServerConfig(
            default_deadline_s=default_deadlines(profile, specs, per_model, everyone),
            max_body_bytes=int(args.max_body_mb * 2**20),
            drain_timeout_s=args.graceful_timeout_s,
        )
        env = {k: v for k, v in os.environ.items() if k.startswith("PREDLAT_")}
        cpus = 0 if gpu else args.slots * args.threads
        local = {} if args.address else {"num_cpus": _local_cpus(args.replicas * cpus)}
        ray.init(
            address=args.address,
            include_dashboard=False,
            runtime_env={"env_vars": env} if env else None,
            **local,
        )
        serve.start(proxy_location="Disabled")  # the front door is predlat's own app
        replica = ReplicaConfig(
            tuple(names),
            slots=args.slots,
            policy=args.policy,
            threads=args.threads,
            device=device,
            max_queue=args.max_queue,
        )
        cluster = ClusterConfig(
            replicas=args.replicas,
            cpus_per_replica=cpus,
            gpus_per_replica=1 if gpu else 0,
        )
        handle = deploy(replica, cluster)
    except BaseException:
        sock.close()
        raise
    runtime = ClusterRuntime(handle, {s.name: s for s in specs}, args.ray_transport)
    app = create_app(runtime, specs, config)
    host, port = sock.getsockname()[:2]
    where = args.address or "a local Ray instance"
    print(
        f"predlat serve: {', '.join(s.name for s in specs)} on http://{host}:{port} "
        f"({args.replicas} replicas x {args.slots} slots on {where}, {args.policy})",
        flush=True,
    )
    try:
        stopped_by = run_server(app, sock, graceful_timeout_s=args.graceful_timeout_s)
    finally:
        runtime.close()
        if args.address:  # a shared cluster: take our app off it; a local one just ends
            serve.delete(APP_NAME)
        ray.shutdown()
        sock.close()
    why = f" on {signal.Signals(stopped_by).name}" if stopped_by else ""
    print(f"predlat serve: stopped{why}", flush=True)
    return 0


def _local_cpus(needed: int) -> int:
    """CPUs a local Ray instance declares: the cores, or what the replicas ask for if
    more (then they share cores, and the user is told)."""
    cores = os.cpu_count() or 1
    if needed > cores:
        print(
            f"predlat serve: the replicas ask for {needed} CPUs, this machine has {cores}: "
            "they will share cores",
            flush=True,
        )
    return max(cores, needed)
