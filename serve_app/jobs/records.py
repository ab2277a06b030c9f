"""Job records in the object store, so every coordinator incarnation sees them.

Layout under ``prefix``::

    {prefix}/records/{job_id}.json   the JobRecord (status + plan), rewritten on changes
    {prefix}/active/{job_id}         an empty marker while the job is unfinished

The markers let a restarted coordinator find the jobs it must resume by
listing one small prefix instead of every record ever written. Calls block:
the coordinator runs them in a thread.
"""

from __future__ import annotations

import re

from ..errors import NotFound
from ..storage import ObjectNotFoundError, ObjectStore
from .models import JobRecord

JOB_ID_RE = re.compile(r"[0-9a-f]{32}")
RECORD_CONTENT_TYPE = "application/json"


class JobNotFound(NotFound):
    """404: no job has this id (the message never echoes the id a client sent)."""

    def __init__(self, message: str = "no job with this id", fields=None) -> None:
        super().__init__(message, fields)


class JobRecords:
    def __init__(self, store: ObjectStore, prefix: str = "jobs") -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def _record_key(self, job_id: str) -> str:
        return f"{self.prefix}/records/{job_id}.json"

    def _active_key(self, job_id: str) -> str:
        return f"{self.prefix}/active/{job_id}"

    def save(self, record: JobRecord) -> None:
        self.store.put(self._record_key(record.status.job_id), record.model_dump_json().encode(), RECORD_CONTENT_TYPE)

    def load(self, job_id: str) -> JobRecord:
        if not JOB_ID_RE.fullmatch(job_id):
            raise JobNotFound()
        try:
            data = self.store.get(self._record_key(job_id))
        except ObjectNotFoundError:
            raise JobNotFound() from None
        return JobRecord.model_validate_json(data)

    def mark_active(self, job_id: str) -> None:
        self.store.put(self._active_key(job_id), b"", "application/octet-stream")

    def clear_active(self, job_id: str) -> None:
        self.store.delete(self._active_key(job_id))

    def active_ids(self) -> list[str]:
        start = len(self._active_key(""))
        return [key[start:] for key in self.store.list(self._active_key("")) if JOB_ID_RE.fullmatch(key[start:])]
