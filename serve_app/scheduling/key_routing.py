"""Which generator replica should take a plan: the one forming a batch of its key, else the least loaded.

Ranks, best first (Serve's router takes the first rank with a replica below
``max_ongoing_requests``, so a full replica spills over to the next rank and
no replica is ever sent more than it accepts):

1. Replicas forming a batch of the plan's key with room left, fullest first,
   if that batch starts within ``join_slack_s`` of when a new batch would on
   the least loaded replica (work ahead of it vs. that replica's backlog): as their routing stats say
   (``forming``, 0.2-0.4 s old) or as this caller remembers routing there
   within ``memory_s`` (fresher, but per caller). The slack is what joining a
   batch is worth waiting for (the router uses one item's estimated GPU
   seconds: a longer wait costs the caller more than batching saves).
2. The key's *home* for a new batch: among replicas within ``home_slack_s``
   of the least loaded (about one item: a new batch goes where it starts
   soonest), the one with the highest rendezvous hash of (key, replica).
   Every caller (each proxy and ingress replica runs its own router) computes
   the same home without talking, so concurrent first items of a key meet on
   one replica instead of opening a half-full batch on each.
3. Every other replica, least backlog first.

So a busy key cannot pile onto one replica while others idle, and no key
waits for another: fairness between keys inside a replica is the batcher's
(the longest-waiting ready queue runs first).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


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


@dataclass
class _Routed:
    replica_id: str
    room: int
    until: float


class KeyRanking:
    def __init__(self, memory_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.memory_s = memory_s
        self._clock = clock
        self._routed: dict[str, _Routed] = {}
        self._room_seen: dict[str, dict[str, int]] = {}

    def rank(
        self, key: str, replicas: Sequence[ReplicaView], join_slack_s: float, home_slack_s: float
    ) -> list[list[str]]:
        """Replica ids in ranks, best first; every replica appears exactly once.

        The slacks are GPU seconds above the least loaded replica (see the module doc).
        """
        if not replicas:
            return []
        least = min(replica.backlog_s for replica in replicas)
        room = {replica.replica_id: replica.forming.get(key, 0) for replica in replicas}
        remembered = self._remembered(key)
        if remembered is not None and remembered.replica_id in room:
            room[remembered.replica_id] = remembered.room
        self._room_seen[key] = room
        joinable = sorted(
            (room[replica.replica_id], replica.replica_id)
            for replica in replicas
            if room[replica.replica_id] > 0 and replica.forming_starts_in(key) <= least + join_slack_s
        )
        ranks = [[replica_id] for _, replica_id in joinable]
        placed = {replica_id for _, replica_id in joinable}
        homes = [r for r in replicas if r.replica_id not in placed and r.backlog_s <= least + home_slack_s]
        if homes:
            home = max(homes, key=lambda replica: rendezvous_score(key, replica.replica_id))
            ranks.append([home.replica_id])
            placed.add(home.replica_id)
        rest = sorted((replica for replica in replicas if replica.replica_id not in placed), key=lambda r: r.backlog_s)
        ranks.extend([replica.replica_id] for replica in rest)
        return ranks

    def routed(self, key: str, replica_id: str, items: int, cap: int) -> None:
        """Remember that ``items`` items of ``key`` went to ``replica_id`` (batches hold ``cap``)."""
        now = self._clock()
        for stale in [k for k, routed in self._routed.items() if routed.until < now]:
            del self._routed[stale]
        before = self._room_seen.pop(key, {}).get(replica_id, 0)
        # Items beyond the room seen open a new batch there, which then forms.
        room = before - items if items <= before else (cap - (items - before) % cap) % cap
        self._routed[key] = _Routed(replica_id, room, now + self.memory_s)

    def _remembered(self, key: str) -> _Routed | None:
        remembered = self._routed.get(key)
        if remembered is not None and remembered.until < self._clock():
            del self._routed[key]
            return None
        return remembered
