"""What a generator replica tells the scheduler: its work in GPU seconds and its forming batches.

The autoscaling policy reads ``backlog_s`` (queued and running work, estimated
with ``pipeline.cost``); the batch-key router reads ``forming`` (for each batch
key queued here, how many more items its last, still forming batch takes) and
``backlog_s`` to find the least-loaded replica. Ray-free and torch-free: the
router imports ``key_id`` and ``batch_cap`` in every caller process.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..pipeline.settings import BatchSettings


def key_id(settings: BatchSettings) -> str:
    """A short name of a batch key, equal in every process (``hash()`` is salted per process)."""
    return hashlib.blake2b(repr(settings).encode(), digest_size=8).hexdigest()


def batch_cap(audio_duration: float, max_batch_size: int, max_batch_audio_s: float) -> int:
    """Items per batch: at most ``max_batch_size``, and at most ``max_batch_audio_s`` of audio."""
    return max(1, min(max_batch_size, math.floor(max_batch_audio_s / audio_duration)))


@dataclass
class ReplicaLoad:
    backlog_s: float = 0.0
    """Estimated GPU seconds of everything queued here plus what is left of the running batch."""
    requests: int = 0
    """Requests in this replica (queued or running)."""
    forming: dict[str, int] = field(default_factory=dict)
    """Free slots of the forming batch, by ``key_id``; keys whose queue fills whole batches are absent."""
    forming_starts_in_s: dict[str, float] = field(default_factory=dict)
    """Estimated GPU seconds of work ahead of each forming batch (the backlog without it)."""

    def autoscaling_stats(self) -> dict[str, float]:
        return {"backlog_s": self.backlog_s, "requests": float(self.requests)}

    def routing_stats(self, max_batch_size: int, max_batch_audio_s: float) -> dict:
        return {
            "backlog_s": self.backlog_s,
            "forming": dict(self.forming),
            "forming_starts_in_s": dict(self.forming_starts_in_s),
            "max_batch_size": max_batch_size,
            "max_batch_audio_s": max_batch_audio_s,
        }


def replica_load(
    running_left_s: float,
    queued_by_key: Mapping[BatchSettings, int],
    requests: int,
    cap: Callable[[BatchSettings], int],
    estimate_s: Callable[[BatchSettings, int], float],
) -> ReplicaLoad:
    """A replica's load from what is left of its running batch and what waits in each queue."""
    backlog = running_left_s
    forming: dict[str, tuple[int, float]] = {}
    for settings, queued in queued_by_key.items():
        full, rest = divmod(queued, cap(settings))
        backlog += full * estimate_s(settings, cap(settings))
        if rest:
            partial = estimate_s(settings, rest)
            backlog += partial
            forming[key_id(settings)] = (cap(settings) - rest, partial)
    return ReplicaLoad(
        backlog_s=backlog,
        requests=requests,
        forming={key: room for key, (room, _) in forming.items()},
        # Queues run oldest head first, so a forming batch may have everything else ahead of it.
        forming_starts_in_s={key: backlog - own for key, (_, own) in forming.items()},
    )
