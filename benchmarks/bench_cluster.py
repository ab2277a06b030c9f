"""Scheduling benchmark: the simulated GPU model on a multi-node Ray cluster, policies side by side.

    ACESTEP_SIMULATED_MODELS=1 python benchmarks/bench_cluster.py --nodes 2 --gpus-per-node 2

Starts a Ray cluster on this machine (a head without GPUs, ``--nodes`` workers
declaring ``--gpus-per-node`` GPUs each), a SeaweedFS S3 server for the
outputs, and deploys the real app (``deployments.app:build_app``) with the
model ``ace-step-simulated``: every part is the service's except the
denoiser and decoder, which sleep for ``serve_app.pipeline.cost``'s estimate
of an A100. Each profile runs once per variant, on a fresh deployment:

- ``steady``: 32 clients in a closed loop, 3 durations (10/30/60 s), 4 fixed
  replicas: Serve's default router vs the batch-key router.
- ``burst``: 200 requests at once (10/30/60 s), 1..4 replicas: Serve's
  request-count autoscaling (target 8 ongoing, 32 per replica: the previous
  defaults) vs the backlog policy, both with the batch-key router.
- ``mix``: 32 clients in a closed loop, 10/30/60/120/240 s, 1..4 replicas:
  both defaults of before (request-count, default router) vs both new ones.

Clients call the ingress through its handle (two ingress replicas, so two
routers). Reported: p50/p99 latency, throughput (audio seconds per second),
mean batch size (items / batches), generator replicas over time, and the
simulated GPU busy fraction (batch seconds / replica seconds). Writes
``bench_cluster.json`` and PNG plots next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("ACESTEP_SIMULATED_MODELS", "1")  # before serve_app reads its catalog

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench_serve import percentile  # noqa: E402

APP, MODEL = "acestep", "ace-step-simulated"
SHORT, MIXED = (10.0, 30.0, 60.0), (10.0, 30.0, 60.0, 120.0, 240.0)
# Shorter than production's delays (30 s / 600 s) so a run takes minutes; the same for every variant.
DELAYS = {"upscale_delay_s": 3, "downscale_delay_s": 15}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Seaweed:
    """``weed mini`` on free loopback ports, keys enforced; the outputs' S3 store."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.keys = ("bench-access", secrets.token_hex(16))
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        command = [weed, "mini", f"-dir={directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        command += ["-master.telemetry=false", "-webdav=false", "-admin.ui=false", f"-s3.port={self.port}"]
        for component in ("master", "volume", "filer", "admin"):
            port = free_port()
            command += [f"-{component}.port={port}"]
        env = os.environ | {"AWS_ACCESS_KEY_ID": self.keys[0], "AWS_SECRET_ACCESS_KEY": self.keys[1]}
        log = open(directory / "weed.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        from minio import Minio

        client = Minio(f"127.0.0.1:{self.port}", *self.keys, secure=False, region="us-east-1")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"SeaweedFS did not start; see {directory / 'weed.log'}") from None
                time.sleep(0.2)

    def minio(self) -> dict:
        return {"endpoint": f"127.0.0.1:{self.port}", "access_key": self.keys[0], "secret_key": self.keys[1]}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


@dataclass
class Variant:
    name: str
    autoscaling: str
    routing: str
    replicas: tuple[int, int]
    """min, max generator replicas (equal: a fixed count)."""
    max_ongoing: int = 16


@dataclass
class Outcome:
    profile: str
    variant: str
    requests: int
    errors: int
    wall_s: float
    p50_s: float
    p99_s: float
    audio_s_per_s: float
    mean_batch_size: float
    gpu_busy: float
    max_replicas_seen: int
    replicas_over_time: list[tuple[float, int]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def app_args(variant: Variant, store: Seaweed, work_weight: float) -> dict:
    low, high = variant.replicas
    autoscaling = {"min_replicas": low, "max_replicas": high, "initial_replicas": low, **DELAYS}
    autoscaling |= {"target_ongoing_requests": 8, "look_back_period_s": 5, "metrics_interval_s": 1.0}
    generator = {
        "ray_actor_options": {"num_cpus": 0},
        "max_ongoing_requests": variant.max_ongoing,
        "max_queued_requests": 1000,
        "graceful_shutdown_timeout_s": 600,
        "autoscaling_config": autoscaling,
    }
    if variant.routing == "batch_key":
        generator["request_router_config"] = {"request_router_kwargs": {"work_weight": work_weight}}
    return {
        "models": [MODEL],
        "num_gpus": 1,
        "device": "cpu",
        "storage": {"kind": "minio", "minio": {**store.minio(), "bucket": "bench", "secure": False}},
        "warmup": False,
        "generate_timeout_s": 3600,
        "autoscaling": variant.autoscaling,
        "target_queue_wait_s": 20,
        "routing": variant.routing,
        "deployment_options": {
            "Generator": generator,
            "Ingress": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0}},
            "JobCoordinator": {"ray_actor_options": {"num_cpus": 0}},
        },
    }


def running_generators() -> int:
    from ray import serve

    application = serve.status().applications.get(APP)
    if application is None or "Generator" not in application.deployments:
        return 0
    return application.deployments["Generator"].replica_states.get("RUNNING", 0)


def deploy(variant: Variant, store: Seaweed, work_weight: float) -> None:
    from ray import serve

    from deployments.app import build_app

    serve.run(build_app(app_args(variant, store, work_weight)), name=APP, route_prefix="/")
    while running_generators() < variant.replicas[0]:
        time.sleep(0.5)


class ReplicaSampler(threading.Thread):
    def __init__(self, started: float) -> None:
        super().__init__(daemon=True)
        self.started, self.samples, self.stop = started, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - self.started, running_generators()))
            self.stop.wait(1.0)


async def one_request(handle, index: int, duration: float):
    from serve_app.schemas import GenerateRequest

    request = GenerateRequest(
        prompt=f"song {index}", audio_duration=duration, actual_seeds=[index], sample_rate=16000, format="wav"
    )
    started = time.monotonic()
    try:
        response = await handle.generate.remote(request)
    except Exception as exc:
        print(f"request {index} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    output = response.outputs[0]
    batch_s = response.timings.get("diffusion_s", 0.0) + response.timings.get("decode_s", 0.0)
    return time.monotonic() - started, duration, output.batch_size, batch_s


async def drive(profile: str, durations: tuple[float, ...], requests: int, clients: int | None) -> list:
    from ray import serve

    handle = serve.get_app_handle(APP)
    if clients is None:  # a burst: everything at once
        return await asyncio.gather(*(one_request(handle, i, durations[i % len(durations)]) for i in range(requests)))
    numbers = iter(range(requests))
    results: list = []

    async def client() -> None:
        for index in numbers:
            results.append(await one_request(handle, index, durations[index % len(durations)]))

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


def run_profile(profile: str, variant: Variant, store: Seaweed, durations, requests, clients, weight) -> Outcome:
    from ray import serve

    deploy(variant, store, weight)
    started = time.monotonic()
    sampler = ReplicaSampler(started)
    sampler.start()
    results = asyncio.run(drive(profile, durations, requests, clients))
    wall = time.monotonic() - started
    if variant.replicas[0] != variant.replicas[1]:  # see the count come back down
        deadline = time.monotonic() + DELAYS["downscale_delay_s"] + 30
        while running_generators() > variant.replicas[0] and time.monotonic() < deadline:
            time.sleep(1)
    sampler.stop.set()
    sampler.join()
    serve.delete(APP)

    done = [result for result in results if result is not None]
    latencies = [latency for latency, *_ in done]
    samples = sampler.samples
    replica_seconds = sum(
        count * (min(later, wall) - at) for (at, count), (later, _) in zip(samples, samples[1:]) if at < wall
    )
    outcome = Outcome(
        profile=profile,
        variant=variant.name,
        requests=len(results),
        errors=len(results) - len(done),
        wall_s=wall,
        p50_s=percentile(latencies, 50) if latencies else float("nan"),
        p99_s=percentile(latencies, 99) if latencies else float("nan"),
        audio_s_per_s=sum(duration for _, duration, *_ in done) / wall,
        mean_batch_size=len(done) / sum(1 / size for *_, size, _ in done) if done else float("nan"),
        gpu_busy=sum(batch_s / size for *_, size, batch_s in done) / replica_seconds if replica_seconds else 0.0,
        max_replicas_seen=max(count for _, count in sampler.samples),
        replicas_over_time=sampler.samples,
        latencies=latencies,
    )
    print(
        f"{profile:7s} {variant.name:18s} p50 {outcome.p50_s:6.1f}s p99 {outcome.p99_s:6.1f}s "
        f"{outcome.audio_s_per_s:6.1f} audio-s/s batch {outcome.mean_batch_size:4.2f} "
        f"busy {outcome.gpu_busy:4.0%} replicas<= {outcome.max_replicas_seen} errors {outcome.errors}",
        flush=True,
    )
    return outcome


def plot(outcomes: list[Outcome], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    profiles = list(dict.fromkeys(outcome.profile for outcome in outcomes))
    figure, axes = plt.subplots(1, len(profiles), figsize=(5 * len(profiles), 3.6), squeeze=False)
    for axis, profile in zip(axes[0], profiles):
        for outcome in (o for o in outcomes if o.profile == profile):
            times, counts = zip(*outcome.replicas_over_time)
            axis.step(times, counts, where="post", label=outcome.variant)
        axis.set(title=f"{profile}: generator replicas", xlabel="seconds since start", ylabel="RUNNING replicas")
        axis.legend()
    figure.tight_layout()
    figure.savefig(directory / "bench_cluster_replicas.png", dpi=110)
    names.append("bench_cluster_replicas.png")

    figure, axes = plt.subplots(1, len(profiles), figsize=(5 * len(profiles), 3.6), squeeze=False)
    for axis, profile in zip(axes[0], profiles):
        for outcome in (o for o in outcomes if o.profile == profile):
            ordered = sorted(outcome.latencies)
            axis.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=outcome.variant)
        axis.set(title=f"{profile}: latency CDF", xlabel="latency s", ylabel="fraction of requests")
        axis.legend()
    figure.tight_layout()
    figure.savefig(directory / "bench_cluster_latency.png", dpi=110)
    names.append("bench_cluster_latency.png")
    return names


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| profile | variant | requests | errors | p50 s | p99 s | audio s/s | mean batch | GPU busy | max replicas |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.profile} | {o.variant} | {o.requests} | {o.errors} | {o.p50_s:.1f} | {o.p99_s:.1f} "
            f"| {o.audio_s_per_s:.1f} | {o.mean_batch_size:.2f} | {o.gpu_busy:.0%} | {o.max_replicas_seen} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--steady-requests", type=int, default=384)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--mix-requests", type=int, default=96)
    parser.add_argument("--profiles", nargs="+", default=["steady", "burst", "mix"])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--work-weight", type=float, default=6.0, help="the batch-key router's work_weight")
    args = parser.parse_args()
    replicas = args.nodes * args.gpus_per_node

    import ray
    from ray.cluster_utils import Cluster

    work = Path(tempfile.mkdtemp(prefix="bc", dir="/tmp"))  # short: Ray's socket paths have a length limit
    os.environ["RAY_TMPDIR"] = str(work)  # so no other ray.init() on this machine finds this cluster
    (work / "ray").mkdir()
    (work / "s3").mkdir()
    store = Seaweed(work / "s3")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 4,
            "num_gpus": 0,
            "include_dashboard": False,
            "dashboard_port": free_port(),
            "temp_dir": str(work / "ray"),
        },
    )
    try:
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=0, num_gpus=args.gpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        from ray import serve

        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        fixed, scaled = (replicas, replicas), (1, replicas)
        plans = {
            "steady": (
                SHORT,
                args.steady_requests,
                args.clients,
                [
                    Variant("default router", "requests", "default", fixed),
                    Variant("batch-key router", "requests", "batch_key", fixed),
                ],
            ),
            "burst": (
                SHORT,
                args.burst,
                None,
                [
                    Variant("request-count policy", "requests", "batch_key", scaled, max_ongoing=32),
                    Variant("backlog policy", "backlog", "batch_key", scaled),
                ],
            ),
            "mix": (
                MIXED,
                args.mix_requests,
                args.clients,
                [
                    Variant("before (requests, default)", "requests", "default", scaled, max_ongoing=32),
                    Variant("after (backlog, batch-key)", "backlog", "batch_key", scaled),
                ],
            ),
        }
        outcomes = []
        for profile in args.profiles:
            durations, requests, clients, variants = plans[profile]
            for variant in variants:
                outcomes.append(run_profile(profile, variant, store, durations, requests, clients, args.work_weight))
        print(table(outcomes))
        print("plots:", *plot(outcomes, args.out))
        (args.out / "bench_cluster.json").write_text(
            json.dumps({"command": sys.argv, "outcomes": [asdict(o) for o in outcomes]}, indent=1)
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
        store.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
