"""The project's log lines in each replica's Serve log.

Serve sets up only its own ``ray.serve`` logger in a replica; ``serve_app``'s
loggers would fall through to the root logger, which drops INFO. Each
deployment calls ``route_app_logs_to_serve`` first, so ``serve_app`` writes
through Serve's handlers, with its level and format, into the replica's log file.
"""

from __future__ import annotations

import logging

APP_LOGGER = "serve_app"
SERVE_LOGGER = "ray.serve"


def route_app_logs_to_serve() -> None:
    app_logger = logging.getLogger(APP_LOGGER)
    serve_logger = logging.getLogger(SERVE_LOGGER)
    app_logger.handlers = list(serve_logger.handlers)
    app_logger.setLevel(serve_logger.level)
    app_logger.propagate = False
