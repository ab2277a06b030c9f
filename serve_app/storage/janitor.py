"""Durable clean-up of failed uploads: a request's outputs are committed, or removed in the end.

A request's outputs all lie in one folder of their own
(``{prefix}/{folders}/{date}/{request_id}/``, see ``build_output_key``).
Before the first of them is written, the generator records a *pending
upload* marker naming that folder::

    {jobs_prefix}/uploads/{request_id}.json   {"request_id", "folder", "started_at"}

and deletes it only once every output of the request is written: deleting
the marker is the commit, so a request whose marker could not be deleted is
answered 503 like any failed write. When a request fails, the generator
removes what it wrote at once, and drops the marker only if that worked.
Whatever a failure leaves behind while the store is down (a sidecar whose
audio never landed, whole audio+sidecar pairs of a request that answered 503,
a request whose replica died mid-upload) is therefore still named by a
marker, and :class:`Janitor` removes it once the store answers again: every
object in the folder (audio first, so an audio object never outlives its
sidecar), then the marker. A marker is only swept once it is older than any
request's uploads can take (``abandoned_after``), so a request still writing
is never touched. A retried job writes under the same request id and date,
rewriting the marker (and its time) before it writes again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .errors import ObjectNotFoundError
from .keys import SIDECAR_SUFFIX
from .protocol import ObjectStore

logger = logging.getLogger(__name__)

MARKER_CONTENT_TYPE = "application/json"


class PendingUploads:
    """The markers of requests whose outputs are being written (see the module docstring)."""

    def __init__(self, store: ObjectStore, jobs_prefix: str = "jobs") -> None:
        self.store = store
        self.prefix = f"{jobs_prefix.strip('/')}/uploads/"

    def marker_key(self, request_id: str) -> str:
        return f"{self.prefix}{request_id}.json"

    def begin(self, request_id: str, folder: str, started_at: datetime) -> None:
        """Record that ``request_id`` starts writing into ``folder``; raises ``StorageError``."""
        marker = {"request_id": request_id, "folder": folder, "started_at": started_at.isoformat()}
        self.store.put(self.marker_key(request_id), json.dumps(marker).encode(), MARKER_CONTENT_TYPE)

    def commit(self, request_id: str) -> None:
        """Every output of ``request_id`` is written (or removed): forget it; raises ``StorageError``."""
        self.store.delete(self.marker_key(request_id))

    def remove_outputs(self, folder: str) -> list[str]:
        """Delete every object in a request's ``folder``, audio before sidecars (so an audio object
        never outlives its sidecar); returns the keys. Raises ``StorageError``: what is left keeps
        its marker."""
        keys = self.store.list(folder.rstrip("/") + "/")
        ordered = sorted(keys, key=lambda key: key.endswith(SIDECAR_SUFFIX))
        for key in ordered:
            self.store.delete(key)
        return ordered

    def markers(self) -> list[str]:
        return self.store.list(self.prefix)

    def read(self, marker_key: str) -> tuple[str, datetime]:
        """The folder and start time a marker records."""
        marker = json.loads(self.store.get(marker_key))
        return marker["folder"], datetime.fromisoformat(marker["started_at"])


@dataclass
class SweepReport:
    removed_objects: list[str] = field(default_factory=list)
    """Outputs (audio and sidecars) of abandoned uploads that were deleted."""
    swept_requests: list[str] = field(default_factory=list)
    """Markers whose request's leftovers are gone."""
    waiting: int = 0
    """Markers too young to sweep: their request may still be writing."""


class Janitor:
    """Removes what abandoned uploads left behind; safe to run at any time, from one place or several."""

    def __init__(self, uploads: PendingUploads, abandoned_after: timedelta) -> None:
        self.uploads = uploads
        self.store = uploads.store
        self.abandoned_after = abandoned_after

    def sweep(self, now: datetime | None = None) -> SweepReport:
        """One pass over the markers. Raises ``StorageError`` if the store fails mid-way; what was
        not removed keeps its marker, so the next pass finishes the job."""
        now = now or datetime.now(UTC)
        report = SweepReport()
        for marker in self.uploads.markers():
            try:
                folder, started_at = self.uploads.read(marker)
            except ObjectNotFoundError:
                continue  # committed meanwhile
            except (ValueError, KeyError) as exc:
                logger.warning("removing unreadable upload marker %s: %s", marker, exc)
                self.store.delete(marker)
                continue
            if now - started_at < self.abandoned_after:
                report.waiting += 1
                continue
            report.removed_objects += self.uploads.remove_outputs(folder)
            self.store.delete(marker)
            report.swept_requests.append(marker)
        if report.removed_objects:
            logger.warning(
                "removed %d object(s) left by %d failed upload(s)",
                len(report.removed_objects),
                len(report.swept_requests),
            )
        return report
