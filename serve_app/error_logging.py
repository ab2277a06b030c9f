"""Client errors are not server faults: log them at INFO, in one line, without a traceback.

Ray Serve logs every exception a deployment method raises as ERROR with its
traceback ("Request failed."), so an unknown job id (404), a cancel of a
finished job (409) or a bad handle request (422) cost kilobytes of ERROR log
each and bury the real faults. ``ClientErrorsAtInfo`` rewrites such records;
each deployment installs it on Serve's logger when its replica starts.
"""

from __future__ import annotations

import logging

from .errors import ServiceError


def client_error(exc_info: object) -> ServiceError | None:
    """The client error (a ``ServiceError`` below 500) a record's ``exc_info`` carries, if any."""
    if not isinstance(exc_info, tuple) or len(exc_info) != 3:
        return None
    exc = exc_info[1]
    return exc if isinstance(exc, ServiceError) and exc.status < 500 else None


class ClientErrorsAtInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = client_error(record.exc_info)
        if exc is not None:
            record.msg = "client error %d %s: %s"
            record.args = (exc.status, exc.type, exc.message)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


def log_client_errors_at_info(logger: logging.Logger) -> None:
    """Install ``ClientErrorsAtInfo`` on ``logger`` once (replicas may build several deployments)."""
    if not any(isinstance(existing, ClientErrorsAtInfo) for existing in logger.filters):
        logger.addFilter(ClientErrorsAtInfo())
