"""Wire formats of the asynchronous jobs API (``/jobs``).

``JobRequest`` is the ``POST /jobs`` body. ``JobStatus`` is what ``GET /jobs/{id}``, the server-sent events and the
webhook carry. ``JobRecord`` is what the coordinator persists: the status plus
the resolved plan, so a job interrupted by a restart can be run again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from ..progress import Stage
from ..schemas import GenerateRequest, GenerateResponse, GenerationPlan
from .webhooks import parse_webhook_url

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class ItemProgress(BaseModel):
    """One seed's progress; ``step``/``total_steps`` count denoiser evaluations."""

    seed: int
    stage: Stage = "queued"
    step: int = 0
    total_steps: int


class JobProgress(BaseModel):
    """The job as a whole: the least advanced of its items."""

    stage: Stage = "queued"
    step: int = 0
    total_steps: int
    items: list[ItemProgress]


class JobError(BaseModel):
    type: str
    message: str


class WebhookDelivery(BaseModel):
    url: str
    delivered: bool = False
    attempts: int = 0
    last_error: str | None = None


class JobStatus(BaseModel):
    job_id: str
    status: JobState
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = Field(
        default=None, description="Jobs of this coordinator submitted earlier and still queued; null once running."
    )
    progress: JobProgress
    eta_s: float | None = Field(
        default=None, description="Seconds until done, from this job's measured step time; null until it runs."
    )
    attempts: int = Field(default=0, description="Times the job was sent to a generator (a lost replica retries once).")
    result: GenerateResponse | None = None
    error: JobError | None = None
    webhook: WebhookDelivery | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATES


class JobRecord(BaseModel):
    """The persisted form: the public status and the plan that produced it."""

    status: JobStatus
    plan: GenerationPlan


class JobAccepted(BaseModel):
    """``POST /jobs`` answer (202)."""

    job_id: str
    status: JobState
    queue_position: int | None
    status_url: str
    events_url: str


class JobRequest(GenerateRequest):
    """``POST /jobs`` body: the ``/generate`` body, plus where to report the end."""

    webhook_url: str | None = Field(
        default=None, max_length=2048, description="Receives one POST of the final job status when the job ends."
    )

    @field_validator("webhook_url")
    @classmethod
    def _absolute_http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_webhook_url(value)
        return value
