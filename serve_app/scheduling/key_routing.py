"""Which generator replica should take a plan: the one forming a batch of its key, else the least loaded.

Ranks, best first (Serve's router takes the first rank with a replica below
``max_ongoing_requests``, so a full replica spills over to the next rank and
no replica is ever sent more than it accepts):

1. Replicas forming a batch of the plan's key with room left, fullest first:
   as their routing stats say (``forming``, 0.2-0.4 s old) or as this caller
   remembers routing there within ``memory_s`` (fresher, but per caller).
2. The key's *home*: among replicas within ``load_slack_s`` GPU seconds of the
   least loaded, the one with the highest rendezvous hash of (key, replica).
   Every caller (each proxy and ingress replica runs its own router) computes
   the same home without talking, so concurrent first items of a key meet on
   one replica instead of opening a half-full batch on each.
3. Every other replica, least backlog first.

A replica more than ``load_slack_s`` above the least loaded is never
preferred in ranks 1-2, so a busy key cannot pile onto one replica while
others idle. Fairness between keys inside a replica is the batcher's (the
longest-waiting ready queue runs first).
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

    @classmethod
    def from_stats(cls, replica_id: str, stats: Mapping | None) -> ReplicaView:
        stats = stats or {}
        return cls(replica_id, float(stats.get("backlog_s", 0.0)), dict(stats.get("forming") or {}))


def rendezvous_score(key: str, replica_id: str) -> int:
    digest = hashlib.blake2b(f"{key}\0{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass
class _Routed:
    replica_id: str
    room: int
    until: float


class KeyRanking:
    def __init__(
        self, load_slack_s: float = 30.0, memory_s: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.load_slack_s = load_slack_s
        self.memory_s = memory_s
        self._clock = clock
        self._routed: dict[str, _Routed] = {}
        self._room_seen: dict[str, dict[str, int]] = {}

    def rank(self, key: str, replicas: Sequence[ReplicaView]) -> list[list[str]]:
        """Replica ids in ranks, best first; every replica appears exactly once."""
        if not replicas:
            return []
        least = min(replica.backlog_s for replica in replicas)
        eligible = [replica for replica in replicas if replica.backlog_s <= least + self.load_slack_s]
        room = {replica.replica_id: replica.forming.get(key, 0) for replica in eligible}
        remembered = self._remembered(key)
        if remembered is not None and remembered.replica_id in room:
            room[remembered.replica_id] = remembered.room
        self._room_seen[key] = room
        joinable = sorted((slots, replica_id) for replica_id, slots in room.items() if slots > 0)
        ranks = [[replica_id] for _, replica_id in joinable]
        placed = {replica_id for _, replica_id in joinable}
        homes = [replica for replica in eligible if replica.replica_id not in placed]
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
