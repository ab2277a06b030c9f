"""Routing in simulation: Serve's power-of-two router vs the batch-key router, on virtual time.

    python benchmarks/simulate_routing.py                      # the benchmark's profiles
    python benchmarks/simulate_routing.py --work-weight 0 3 6 12

A discrete-event model of ``bench_cluster.py``'s closed-loop profiles that runs
in seconds, for choosing the router's ``work_weight`` and seeing why (and, with
``--profiles burst``, the least p99 any autoscaling policy can give a burst of
200 on ``--replicas`` replicas, as all of them run from its first second): clients
send a request as soon as their last one is answered (after ``--overhead``
seconds of ingress, encoding and upload), through one of two callers (each
with its own router, as the two ingress replicas have) to replicas that batch
like the engine (the ready queue with the oldest head runs first, up to
``batch_cap`` items; a lone item waits ``--batch-wait`` for batch-mates) and
take the cost model's GPU seconds per batch. The batch-key router is the
service's ``KeyRanking``, fed the replicas' ``replica_load`` as routing stats
taken every 0.25 s and delivered ``--stats-age`` later; the default router
takes the shorter of two random replicas' queues. Both honour
``max_ongoing_requests``. It models the scheduling only: the cluster benchmark
is the measurement.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import os
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("ACESTEP_SIMULATED_MODELS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serve_app.generation.load import batch_cap, key_id, replica_load  # noqa: E402
from serve_app.pipeline.cost import CostModel  # noqa: E402
from serve_app.pipeline.registry import get_spec  # noqa: E402
from serve_app.pipeline.settings import BatchSettings, GenerationParams, model_defaults  # noqa: E402
from serve_app.scheduling.key_routing import KeyRanking, ReplicaView  # noqa: E402

MODEL = "ace-step-simulated"
STATS_PERIOD_S = 0.25


def batch_settings(duration: float) -> BatchSettings:
    spec = get_spec(MODEL)
    defaults = {name: value for name, value in model_defaults(spec).items() if name in GenerationParams.model_fields}
    fields = {"model": MODEL, "audio_duration": duration, "prompt": "", "lyrics": "", "actual_seeds": (0,)}
    return GenerationParams(**{**defaults, **fields}).batch_settings()


@dataclass
class Profile:
    clients: int
    requests: int
    durations: tuple[float, ...]


@dataclass
class Replica:
    replica_id: str
    queues: dict[BatchSettings, list[tuple[float, float]]] = field(default_factory=dict)
    """Per batch key: (enqueued at, request sent at) of each queued item."""
    running: tuple[BatchSettings, list[tuple[float, float]]] | None = None
    running_ends_at: float = 0.0
    ongoing: int = 0
    busy_s: float = 0.0


class Simulation:
    def __init__(self, profile: Profile, router: str, args: argparse.Namespace, seed: int) -> None:
        self.profile, self.router, self.args = profile, router, args
        self.random = random.Random(seed)
        self.now = 0.0
        self.events: list = []
        self.sequence = itertools.count()
        self.replicas = [Replica(f"replica{i}") for i in range(args.replicas)]
        self.rankings = [KeyRanking(work_weight=args.weight, clock=lambda: self.now) for _ in range(2)]
        self.stats = {replica.replica_id: ReplicaView(replica.replica_id) for replica in self.replicas}
        self.settings = {duration: batch_settings(duration) for duration in profile.durations}
        self.cost = CostModel(scale=get_spec(MODEL).relative_cost)
        self.numbers = itertools.count()
        self.tokens = itertools.count()
        self.waiting: list[tuple] = []
        self.latencies: list[float] = []
        self.audio_s = 0.0
        self.batches: list[int] = []

    def cap(self, settings: BatchSettings) -> int:
        return batch_cap(settings.audio_duration, self.args.max_batch_size, self.args.max_batch_audio_s)

    def at(self, time: float, action: Callable, *arguments) -> None:
        heapq.heappush(self.events, (time, next(self.sequence), action, arguments))

    def send_next(self, sent_at: float) -> None:
        number = next(self.numbers)
        if number < self.profile.requests:
            duration = self.profile.durations[number % len(self.profile.durations)]
            caller = self.random.randrange(len(self.rankings))
            self.at(sent_at + self.args.overhead / 2, self.route, self.settings[duration], sent_at, caller)

    def route(self, settings: BatchSettings, sent_at: float, caller: int) -> None:
        open_replicas = [replica for replica in self.replicas if replica.ongoing < self.args.max_ongoing]
        if not open_replicas:
            self.waiting.append((settings, sent_at, caller))
            return
        if self.router == "default":
            pair = self.random.sample(open_replicas, min(2, len(open_replicas)))
            chosen = min(pair, key=lambda replica: replica.ongoing)
        else:
            key, cap = key_id(settings), self.cap(settings)
            cost = lambda items: self.cost.estimate(settings, items)  # noqa: E731
            ranks = self.rankings[caller].rank(key, list(self.stats.values()), 1, cap, cost)
            by_id = {replica.replica_id: replica for replica in open_replicas}
            chosen = next(by_id[replica_id] for (replica_id,) in ranks if replica_id in by_id)
            self.rankings[caller].hold(next(self.tokens), key, self.stats[chosen.replica_id], 1, cap, cost)
        chosen.ongoing += 1
        chosen.queues.setdefault(settings, []).append((self.now, sent_at))
        self.at(self.now, self.start_batch, chosen)

    def start_batch(self, replica: Replica) -> None:
        if replica.running is not None:
            return
        ready, wake_at = None, None
        for settings, queue in replica.queues.items():
            head = queue[0][0]
            if len(queue) >= self.cap(settings) or head + self.args.batch_wait <= self.now + 1e-9:
                if ready is None or head < replica.queues[ready][0][0]:
                    ready = settings
            else:
                wake_at = min(head + self.args.batch_wait, wake_at or float("inf"))
        if ready is None:
            if wake_at is not None:
                self.at(wake_at, self.start_batch, replica)
            return
        queue = replica.queues.pop(ready)
        batch, rest = queue[: self.cap(ready)], queue[self.cap(ready) :]
        if rest:
            replica.queues[ready] = rest
        took = self.cost.estimate(ready, len(batch))
        replica.running, replica.running_ends_at = (ready, batch), self.now + took
        replica.busy_s += took
        self.batches.append(len(batch))
        self.at(replica.running_ends_at, self.finish_batch, replica)

    def finish_batch(self, replica: Replica) -> None:
        settings, batch = replica.running
        replica.running = None
        for _, sent_at in batch:
            replica.ongoing -= 1
            answered = self.now + self.args.overhead / 2
            self.latencies.append(answered - sent_at)
            self.audio_s += settings.audio_duration
            self.send_next(answered)
        waiting, self.waiting = self.waiting, []
        for request in waiting:
            self.route(*request)
        self.start_batch(replica)

    def take_stats(self) -> None:
        snapshot = {}
        for replica in self.replicas:
            left = max(0.0, replica.running_ends_at - self.now) if replica.running else 0.0
            queued = {settings: len(queue) for settings, queue in replica.queues.items()}
            load = replica_load(left, queued, replica.ongoing, self.cap, self.cost.estimate)
            snapshot[replica.replica_id] = ReplicaView.from_stats(
                replica.replica_id, load.routing_stats(self.args.max_batch_size, self.args.max_batch_audio_s)
            )
        self.at(self.now + self.args.stats_age, self.stats.update, snapshot)
        if len(self.latencies) < self.profile.requests:
            self.at(self.now + STATS_PERIOD_S, self.take_stats)

    def run(self) -> dict[str, float]:
        self.take_stats()
        for _ in range(self.profile.clients):
            self.send_next(0.0)
        while self.events:
            self.now, _, action, arguments = heapq.heappop(self.events)
            action(*arguments)
        ordered = sorted(self.latencies)
        return {
            "mean batch": len(ordered) / len(self.batches),
            "audio s/s": self.audio_s / self.now,
            "p50 s": ordered[len(ordered) // 2],
            "p99 s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "GPU busy": sum(replica.busy_s for replica in self.replicas) / (len(self.replicas) * self.now),
        }


PROFILES = {
    "steady": Profile(32, 192, (10.0, 30.0, 60.0)),
    "light": Profile(8, 120, (10.0, 30.0, 60.0)),
    "mix": Profile(32, 200, (10.0, 30.0, 60.0, 120.0, 240.0)),
    # Every request at once, all replicas up from the start: the least p99 a burst of 200 can
    # have on this many replicas, whatever the autoscaling policy.
    "burst": Profile(200, 200, (10.0, 30.0, 60.0)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="+", default=["steady", "light", "mix"], choices=list(PROFILES))
    parser.add_argument("--work-weight", nargs="+", type=float, default=[0.0, 3.0, 6.0, 12.0])
    parser.add_argument("--seeds", type=int, default=5, help="runs per row, averaged")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--max-ongoing", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-audio-s", type=float, default=480.0)
    parser.add_argument("--batch-wait", type=float, default=0.1)
    parser.add_argument("--overhead", type=float, default=1.5, help="seconds per request outside the replica")
    parser.add_argument("--stats-age", type=float, default=0.3)
    args = parser.parse_args()

    columns = ("mean batch", "audio s/s", "p50 s", "p99 s", "GPU busy")
    print("| profile | router | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for name in args.profiles:
        rows = [("default", None)] + [("batch-key", weight) for weight in args.work_weight]
        for router, weight in rows:
            args.weight = weight or 0.0
            runs = [Simulation(PROFILES[name], router, args, seed).run() for seed in range(args.seeds)]
            means = [statistics.fmean(run[column] for run in runs) for column in columns]
            label = router if weight is None else f"batch-key, work_weight {weight:g}"
            print(f"| {name} | {label} | " + " | ".join(f"{value:.2f}" for value in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
