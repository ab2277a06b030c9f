"""Calls between deployments: how long a caller waits, and what a Ray failure means.

The one place where Ray's exceptions are classified, for the ingress (which
maps them to the ``ServiceError`` a client sees) and the job coordinator
(which retries, backs off or fails a job):

- *replica lost*: the replica that had accepted the call died (its node went
  away, it crashed). Serve never retries an accepted call, so the caller does.
- *busy*: no replica took the call: every queue is full (``BackPressureError``),
  the deployment is not up yet, or none took it within ``accept_timeout_s``
  (no replica can be placed, e.g. no free GPU). Nothing ran; sending it again
  later is safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentResponse, DeploymentResponseGenerator

from serve_app.errors import ServiceError, Unavailable

logger = logging.getLogger("ray.serve")


class NotAcceptedInTime(Exception):
    """No replica accepted the call within the caller's wait; it was withdrawn."""

    def __init__(self, what: str, timeout_s: float) -> None:
        super().__init__(f"no {what} replica took the request within {timeout_s:g}s")
        self.what = what
        self.timeout_s = timeout_s


def is_replica_lost(exc: BaseException) -> bool:
    # A RayTaskError can carry an actor death from further down a chain of calls.
    return isinstance(exc, RayActorError) or (isinstance(exc, RayTaskError) and isinstance(exc.cause, RayActorError))


def is_busy(exc: BaseException) -> bool:
    return isinstance(exc, BackPressureError | DeploymentUnavailableError | NotAcceptedInTime)


def as_service_error(exc: BaseException, what: str) -> ServiceError | None:
    """The error a client should see for ``exc`` from a call to ``what``; None for a server fault."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, BackPressureError):
        return Unavailable(f"every {what} replica is at capacity; retry later")
    if isinstance(exc, NotAcceptedInTime):
        return Unavailable(
            f"no {what} replica is available (none took the request within {exc.timeout_s:g}s); retry later"
        )
    if isinstance(exc, DeploymentUnavailableError):
        return Unavailable(f"the {what} is starting; retry later")
    if is_replica_lost(exc):
        return Unavailable(f"the {what} replica handling the request was lost; retry")
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, ServiceError):
        return exc.cause
    return None


async def accepted(response: DeploymentResponse | DeploymentResponseGenerator, what: str, timeout_s: float) -> None:
    """Wait until a replica has accepted ``response``'s call; past ``timeout_s`` withdraw it.

    A handle call waits for a replica without bound (Serve's ``request_timeout_s`` covers
    HTTP only); this bounds the wait for a replica, not the time the replica then takes.
    """
    # The object-ref conversions (Serve's developer API) return once a replica took the call.
    if isinstance(response, DeploymentResponseGenerator):
        assignment = response._to_object_ref_gen()
    else:
        assignment = response._to_object_ref()
    try:
        await asyncio.wait_for(assignment, timeout_s)
    except TimeoutError:
        response.cancel()
        raise NotAcceptedInTime(what, timeout_s) from None


async def call(send: Callable[[], DeploymentResponse], what: str, accept_timeout_s: float, attempts: int = 1) -> Any:
    """The result of the handle call ``send()`` makes; failures raise the ``ServiceError`` a client
    should see. A call whose replica was lost is sent again, up to ``attempts`` times in all
    (Serve's router has by then dropped the dead replica, so it goes to another)."""
    attempt = 1
    while True:
        response = send()
        try:
            await accepted(response, what, accept_timeout_s)
            return await response
        except Exception as exc:
            if is_replica_lost(exc) and attempt < attempts:
                logger.warning("a %s replica was lost mid-request (%s); sending it again", what, exc)
                attempt += 1
                continue
            error = as_service_error(exc, what)
            if error is None:
                raise
            if attempt > 1 and is_busy(exc):
                # The client should know why it waited twice.
                error = Unavailable(f"the {what} replica handling the request was lost, and {error.message}")
            raise error from None


class AcceptedStream:
    """A streaming handle call that waits at most ``accept_timeout_s`` for a replica
    (``NotAcceptedInTime`` after that), then yields the replica's events."""

    def __init__(self, response: DeploymentResponseGenerator, what: str, accept_timeout_s: float) -> None:
        self._response = response
        self._what = what
        self._accept_timeout_s = accept_timeout_s

    def cancel(self) -> None:
        self._response.cancel()

    async def __aiter__(self):
        await accepted(self._response, self._what, self._accept_timeout_s)
        async for event in self._response:
            yield event
