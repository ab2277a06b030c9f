"""Webhook delivery against a receiver on 127.0.0.1: retries, final answers, refusals."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serve_app.jobs.webhooks import WebhookPolicy, WebhookSender

FAST = {"first_delay_s": 0.01, "max_delay_s": 0.02, "timeout_s": 2.0}


@pytest.fixture
def receiver():
    """Answers each POST with the next status from ``statuses`` (then 204) and records the calls."""
    calls, statuses = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            calls.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(statuses.pop(0) if statuses else 204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", calls, statuses
    server.shutdown()


def deliver(url: str, **policy):
    sender = WebhookSender(WebhookPolicy(**{**FAST, **policy}))
    return asyncio.run(sender.deliver(url, "0" * 32, b'{"status": "succeeded"}'))


def test_retries_until_delivered_with_the_job_id_as_idempotency_key(receiver):
    url, calls, statuses = receiver
    statuses.extend([503, 429])
    outcome = deliver(url, allow_private_networks=True)
    assert outcome.delivered and outcome.attempts == 3
    assert [headers["Idempotency-Key"] for headers, _ in calls] == ["0" * 32] * 3
    assert calls[0][1] == b'{"status": "succeeded"}'


def test_a_client_error_is_final_and_retries_are_bounded(receiver):
    url, calls, statuses = receiver
    statuses.append(404)
    outcome = deliver(url, allow_private_networks=True)
    assert not outcome.delivered and outcome.attempts == 1 and outcome.last_error == "HTTP 404"
    statuses.extend([500] * 10)
    outcome = deliver(url, allow_private_networks=True, max_attempts=3)
    assert not outcome.delivered and outcome.attempts == 3 and len(calls) == 4


def test_private_addresses_are_refused_unless_allowed(receiver):
    url, calls, _ = receiver
    outcome = deliver(url)
    assert not outcome.delivered and outcome.attempts == 0 and "not a public address" in outcome.last_error
    assert calls == []


def test_an_unsendable_url_fails_cleanly():
    outcome = deliver("http://bad\x00host/", allow_private_networks=True)
    assert not outcome.delivered and "not a valid URL" in outcome.last_error
