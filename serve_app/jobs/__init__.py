"""Asynchronous jobs: submit a generation, watch its progress, cancel it, fetch its result.

Ray-free: ``deployments/jobs.py`` hosts the ``JobCoordinator`` as one Serve
replica and gives it the generator's streaming handle.
"""

from .coordinator import CoordinatorConfig, JobConflict, JobCoordinator
from .models import JobAccepted, JobProgress, JobRequest, JobStatus
from .records import JobNotFound, JobRecords
from .state import JobStream
from .webhooks import WebhookPolicy, WebhookSender

__all__ = [
    "CoordinatorConfig",
    "JobAccepted",
    "JobConflict",
    "JobCoordinator",
    "JobNotFound",
    "JobProgress",
    "JobRecords",
    "JobRequest",
    "JobStatus",
    "JobStream",
    "WebhookPolicy",
    "WebhookSender",
]
