"""What a replica's health check says about its store: logged, never fatal.

Serve restarts a replica whose ``check_health`` raises, and gives a deployment
up (DEPLOY_FAILED) when new replicas keep failing. A store outage is not the
replica's fault and a new replica would meet the same outage, so health checks
report the store through :class:`StorageWatch` (a log line each time its
state changes) instead of raising; clients see the state in ``/health``.
"""

from __future__ import annotations

import logging

from .errors import StorageConfigError, StorageError
from .protocol import ObjectStore

logger = logging.getLogger(__name__)


class StorageWatch:
    def __init__(self, store: ObjectStore, owner: str) -> None:
        self.store = store
        self.owner = owner
        self.state = "ok"

    def observe(self) -> str:
        """Reach the store once; returns ``ok``, ``unavailable`` or ``misconfigured: <why>``."""
        try:
            self.store.check()
            state = "ok"
        except StorageConfigError as exc:
            state = f"misconfigured: {exc.public_message}"
        except StorageError:
            state = "unavailable"
        if state != self.state:
            if state == "ok":
                logger.warning("%s: object storage is reachable again", self.owner)
            else:
                logger.warning("%s: object storage is %s (the replica stays up and reports it)", self.owner, state)
        self.state = state
        return state
