"""Which generator replica should take a plan: where it costs least, batching counted.

For each replica the ranking prices placing the plan's items there:

    finish + work_weight * added

``finish`` is when the plan's last item would be done: its batch joins the
batch of its key still forming there (if it has room) and starts when the work
ahead of that batch is done, else it opens a new batch behind the replica's
whole backlog. ``added`` is the GPU time the placement adds to that replica: a
row in a forming batch costs a fraction of a batch of its own
(``pipeline.cost``), so joining adds less than opening. ``work_weight`` counts
each added GPU second as many times as it delays other requests: the items of
the batch it joins and those queued behind it, and every request that comes
after. With it at 0 the ranking is earliest-finish-first (spreads keys, small
batches); the higher it is, the longer a plan accepts to wait for a batch of
its key. 6 (about a replica's worth of requests under load) raised the mean
batch most without costing throughput or p99 in ``benchmarks/bench_cluster.py``'s
profiles (simulated side by side in ``benchmarks/simulate_routing.py``).

Replicas come back in ascending price, one per rank (Serve takes the first rank
with a replica below ``max_ongoing_requests``, so a full replica spills over
to the next and none is ever sent more than it accepts). Equal prices (idle
replicas) are broken by a rendezvous hash of (key, replica), so every caller
(each ingress replica and the job coordinator run their own router) opens the
first batch of a key on the same replica without talking.

Routing stats are 0.2-0.4 s old, and Serve ranks a burst of requests before the
first of them reaches a replica, so the ranking adds the plans this caller
sent or is sending to a replica (``hold``: where it ranked first, moved to
where it was accepted) until newer stats arrive (``observe``) or ``memory_s``
passes. No key waits for another here: a plan
joins a batch only while that is cheaper than starting elsewhere, and inside a
replica the batcher runs the longest-waiting ready queue first.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace

BatchCost = Callable[[int], float]
"""Estimated GPU seconds of one batch of ``n`` items of the plan's key."""


@dataclass(frozen=True)
class ReplicaView:
    """What the ranking knows of a replica: its id and its last routing stats."""

    replica_id: str
    backlog_s: float = 0.0
    forming: Mapping[str, int] = field(default_factory=dict)
    """Free slots of the batch forming there, by key."""
    forming_starts_in_s: Mapping[str, float] = field(default_factory=dict)
    """GPU seconds of work ahead of that batch, by key (the backlog when absent)."""

    @classmethod
    def from_stats(cls, replica_id: str, stats: Mapping | None) -> ReplicaView:
        stats = stats or {}
        return cls(
            replica_id,
            float(stats.get("backlog_s", 0.0)),
            dict(stats.get("forming") or {}),
            dict(stats.get("forming_starts_in_s") or {}),
        )

    def forming_starts_in(self, key: str) -> float:
        return self.forming_starts_in_s.get(key, self.backlog_s)


def rendezvous_score(key: str, replica_id: str) -> int:
    digest = hashlib.blake2b(f"{key}\0{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class Placement:
    """``items`` items of ``key`` on one replica: what they cost and how the replica looks after."""

    finish_s: float
    added_s: float
    after: ReplicaView


def place(view: ReplicaView, key: str, items: int, cap: int, batch_cost: BatchCost) -> Placement:
    def queue_cost(queued: int) -> float:
        full, rest = divmod(queued, cap)
        return full * batch_cost(cap) + (batch_cost(rest) if rest else 0.0)

    room = view.forming.get(key, 0)
    forming = cap - room if 0 < room < cap else 0
    start = view.forming_starts_in(key) if forming else view.backlog_s
    added = queue_cost(forming + items) - queue_cost(forming)
    backlog = view.backlog_s + added
    rest = (forming + items) % cap
    rooms, starts = dict(view.forming), dict(view.forming_starts_in_s)
    if rest:
        rooms[key], starts[key] = cap - rest, backlog - batch_cost(rest)
    else:
        rooms.pop(key, None)
        starts.pop(key, None)
    after = replace(view, backlog_s=backlog, forming=rooms, forming_starts_in_s=starts)
    return Placement(start + queue_cost(forming + items), added, after)


@dataclass(frozen=True)
class _Held:
    key: str
    items: int
    cap: int
    batch_cost: BatchCost
    until: float


@dataclass
class _Picture:
    stats: ReplicaView
    """The stats the held plans are added to."""
    held: dict[Hashable, _Held] = field(default_factory=dict)


class KeyRanking:
    def __init__(
        self, work_weight: float = 6.0, memory_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if work_weight < 0 or memory_s < 0:
            raise ValueError("need work_weight >= 0 and memory_s >= 0")
        self.work_weight = work_weight
        self.memory_s = memory_s
        self._clock = clock
        self._pictures: dict[str, _Picture] = {}

    def observe(self, stats: ReplicaView) -> ReplicaView:
        """The replica as this caller sees it: its stats plus the plans it holds there."""
        picture = self._pictures.get(stats.replica_id)
        if picture is None:
            return stats
        if picture.stats != stats:  # newer stats count what was sent before them
            del self._pictures[stats.replica_id]
            return stats
        now = self._clock()
        view = stats
        for token, held in list(picture.held.items()):
            if held.until < now:
                del picture.held[token]
            else:
                view = place(view, held.key, held.items, held.cap, held.batch_cost).after
        return view

    def rank(
        self, key: str, replicas: Sequence[ReplicaView], items: int, cap: int, batch_cost: BatchCost
    ) -> list[list[str]]:
        """Replica ids in ranks of one, cheapest first; every replica appears exactly once."""

        def price(view: ReplicaView) -> tuple[float, int]:
            placement = place(self.observe(view), key, items, cap, batch_cost)
            return placement.finish_s + self.work_weight * placement.added_s, -rendezvous_score(key, view.replica_id)

        return [[view.replica_id] for view in sorted(replicas, key=price)]

    def hold(self, token: Hashable, key: str, stats: ReplicaView, items: int, cap: int, batch_cost: BatchCost) -> None:
        """Count request ``token`` (``items`` items of ``key``) on the replica ``stats`` describes
        until newer stats arrive; holding the same token again moves it there."""
        for picture in self._pictures.values():
            picture.held.pop(token, None)
        self.observe(stats)  # drops a picture older than these stats
        picture = self._pictures.setdefault(stats.replica_id, _Picture(stats))
        picture.held[token] = _Held(key, items, cap, batch_cost, self._clock() + self.memory_s)
