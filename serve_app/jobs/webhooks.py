"""One POST of a finished job's body to the client's ``webhook_url``.

Retried with exponential backoff on connection errors, timeouts, 408, 429 and
5xx; any other answer is final. Each attempt carries the job id as
``Idempotency-Key`` so a receiver can drop a repeat (a retry after a lost
answer, or a coordinator restart between delivery and its record).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class WebhookPolicy:
    max_attempts: int = 5
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    timeout_s: float = 10.0


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: bool
    attempts: int
    last_error: str | None = None


class WebhookSender:
    def __init__(self, policy: WebhookPolicy | None = None) -> None:
        self.policy = policy or WebhookPolicy()

    async def deliver(self, url: str, job_id: str, body: bytes) -> DeliveryOutcome:
        policy = self.policy
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": job_id,
            "User-Agent": "ace-step-serve-webhook",
        }
        delay = policy.first_delay_s
        error: str | None = None
        async with httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False) as client:
            for attempt in range(1, policy.max_attempts + 1):
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                else:
                    if response.is_success:
                        return DeliveryOutcome(True, attempt)
                    error = f"HTTP {response.status_code}"
                    if response.status_code not in RETRYABLE_STATUSES:
                        return DeliveryOutcome(False, attempt, error)
                if attempt < policy.max_attempts:
                    logger.info("webhook for job %s failed (%s); retrying in %.1fs", job_id, error, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, policy.max_delay_s)
        logger.warning("webhook for job %s not delivered after %d attempts: %s", job_id, policy.max_attempts, error)
        return DeliveryOutcome(False, policy.max_attempts, error)
