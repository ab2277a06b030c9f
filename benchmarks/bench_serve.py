"""Serving load benchmark: requests per second, p50/p99 latency and batch sizes under bounded concurrency.

Start the service first, then point this at it:

    serve run configs/serve_dev.yaml &                 # CPU, tiny model, local store
    python benchmarks/bench_serve.py --concurrency 1 4 8

Each concurrency level runs a closed loop: exactly C clients, each sending its
next request as soon as its previous one answered, until the level's
requests are done. Every request has its own seed; all of them share one
batch key unless ``--durations`` lists several (requests cycle through them,
and items of different durations never share a batch). Mean batch size is
read from the responses' ``outputs[].batch_size``.

``--api generate jobs`` measures both paths side by side in one run: a request
is either one POST /generate, or a POST /jobs followed by its server-sent
events until the job ends (latency is submit to final event).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import httpx


@dataclass
class LevelResult:
    api: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    p50_s: float
    p99_s: float
    mean_batch_size: float
    audio_s_per_s: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with n samples, p99 is the max once n < 100."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def generate(client: httpx.Client, request: dict) -> dict | None:
    """The generate response body, or None on an error."""
    response = client.post("/generate", json=request)
    return response.json() if response.status_code == 200 else None


def generate_as_job(client: httpx.Client, request: dict) -> dict | None:
    """Submit a job and follow its events to the end; its result, or None unless it succeeded."""
    accepted = client.post("/jobs", json=request)
    if accepted.status_code != 202:
        return None
    final = None
    with client.stream("GET", accepted.json()["events_url"]) as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                final = json.loads(line[len("data: ") :])
    return final["result"] if final and final["status"] == "succeeded" else None


APIS = {"generate": generate, "jobs": generate_as_job}


def run_level(
    client: httpx.Client, api: str, body: dict, durations: list[float], concurrency: int, requests: int, seeds
) -> LevelResult:
    lock = threading.Lock()
    latencies: list[float] = []
    batch_sizes: list[int] = []
    audio_s = 0.0
    errors = 0
    remaining = iter(range(requests))

    def client_loop() -> None:
        nonlocal audio_s, errors
        while True:
            with lock:
                index = next(remaining, None)
                seed = next(seeds)
            if index is None:
                return
            request = {**body, "audio_duration": durations[index % len(durations)], "actual_seeds": [seed]}
            started = time.perf_counter()
            result = APIS[api](client, request)
            elapsed = time.perf_counter() - started
            with lock:
                if result is None:
                    errors += 1
                    continue
                latencies.append(elapsed)
                for output in result["outputs"]:
                    batch_sizes.append(output["batch_size"])
                    audio_s += output["duration"]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client_loop) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - started
    if not latencies:
        raise SystemExit(f"every request failed at concurrency {concurrency}")
    return LevelResult(
        api=api,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        wall_s=wall,
        requests_per_s=len(latencies) / wall,
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
        mean_batch_size=statistics.fmean(batch_sizes),
        audio_s_per_s=audio_s / wall,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the service (default: the dev config's address)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8], help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=24, help="requests per level")
    parser.add_argument(
        "--durations", type=float, nargs="+", default=[10.0], help="audio seconds; requests cycle through them"
    )
    parser.add_argument("--preset", default="draft")
    parser.add_argument("--infer-step", type=int, default=None, help="override the preset's steps")
    parser.add_argument("--format", default="wav")
    parser.add_argument("--api", nargs="+", choices=sorted(APIS), default=["generate"], help="request paths to measure")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = parser.parse_args(argv)

    body = {"prompt": "synthwave, retro, driving bass, 110 bpm", "preset": args.preset, "format": args.format}
    if args.infer_step is not None:
        body["infer_step"] = args.infer_step
    seeds = itertools.count(1000)

    with httpx.Client(base_url=args.url, timeout=600) as client:
        health = client.get("/health")
        if health.status_code != 200:
            print(f"{args.url}/health answered {health.status_code}: {health.text}", file=sys.stderr)
            return 1
        # Warm-up: the first request of a new shape pays for lazy initialisation.
        run_level(client, "generate", body, args.durations, 1, len(args.durations), seeds)
        results = [
            run_level(client, api, body, args.durations, concurrency, args.requests, seeds)
            for concurrency in args.concurrency
            for api in args.api
        ]

    if args.json:
        for result in results:
            print(json.dumps(asdict(result)))
        return 0
    print(f"preset {args.preset}, durations {args.durations} s, {args.requests} requests per level, {args.url}")
    print("| api | concurrency | requests | errors | req/s | p50 s | p99 s | mean batch size | audio s per s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.api} | {r.concurrency} | {r.requests} | {r.errors} | {r.requests_per_s:.2f} | {r.p50_s:.2f} | "
            f"{r.p99_s:.2f} | {r.mean_batch_size:.2f} | {r.audio_s_per_s:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
