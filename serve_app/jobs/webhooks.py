"""One POST of a finished job's body to the client's ``webhook_url``.

Retried with exponential backoff on connection errors, timeouts, 408, 429 and
5xx; any other answer is final. Each attempt carries the job id as
``Idempotency-Key`` so a receiver can drop a repeat (a retry after a lost
answer, or a coordinator restart between delivery and its record).

A webhook is a request the server makes on a client's behalf, so by default it
may not reach loopback, private, link-local or other reserved addresses (the
cluster's own services, cloud metadata endpoints); a deployment whose
receivers live there opts in with ``allow_private_networks``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass

import httpx

from ..pipeline.invalid_field import InvalidField

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class WebhookPolicy:
    max_attempts: int = 5
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    timeout_s: float = 10.0
    allow_private_networks: bool = False


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: bool
    attempts: int
    last_error: str | None = None


def parse_webhook_url(value: str) -> httpx.URL:
    """The URL if it is an absolute http(s) URL httpx can send to; ``InvalidField`` saying why not."""
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
        raise InvalidField("webhook_url", f"is not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidField("webhook_url", "must be an absolute http:// or https:// URL")
    if url.port is not None and not 0 < url.port < 65536:
        raise InvalidField("webhook_url", f"has port {url.port}, outside 1-65535")
    return url


async def _public_destination(url: httpx.URL) -> str | None:
    """Why ``url`` must not be called (it resolves to a non-public address), or None."""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = await asyncio.to_thread(socket.getaddrinfo, url.host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {url.host}: {exc}"
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if not address.is_global:
            return f"{url.host} resolves to {address}, which is not a public address"
    return None


class WebhookSender:
    def __init__(self, policy: WebhookPolicy | None = None) -> None:
        self.policy = policy or WebhookPolicy()

    async def deliver(self, url: str, job_id: str, body: bytes) -> DeliveryOutcome:
        policy = self.policy
        try:
            target = parse_webhook_url(url)
        except ValueError as exc:
            return DeliveryOutcome(False, 0, f"webhook_url {exc}")
        if not policy.allow_private_networks:
            refusal = await _public_destination(target)
            if refusal is not None:
                logger.warning("webhook for job %s refused: %s", job_id, refusal)
                return DeliveryOutcome(False, 0, f"refused: {refusal}")
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
                    response = await client.post(target, content=body, headers=headers)
                except httpx.TransportError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # anything else will fail the same way again
                    return DeliveryOutcome(False, attempt, f"{type(exc).__name__}: {exc}")
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
