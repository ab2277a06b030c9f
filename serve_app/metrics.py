"""Service metrics, exported through Ray Serve to the dashboard and Prometheus.

``ServeMetrics`` must be built inside a Serve replica (Ray adds the
application, deployment and replica tags). Code outside a replica, tests
included, uses ``NullMetrics``.
"""

from __future__ import annotations

# Ray's exporter does not pass observations through: each process counts them per bucket, and the
# node's agent re-records every count at its bucket's midpoint (the first bucket's lower edge is 0,
# the +Inf bucket's "midpoint" twice the last bound). Bounds are chosen with that in mind.
LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
QUEUE_WAIT_BUCKETS_S = [0.005, 0.01, 0.025, *LATENCY_BUCKETS_S]
"""Queue waits include ``batch_wait_s`` (0.1 s by default): the low end needs resolution."""
STORAGE_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
"""A local write takes milliseconds, a MinIO upload of a long song seconds."""
BATCH_SIZE_BUCKETS = [size + 0.5 for size in range(17)] + [24.5, 32.5, 48.5, 64.5]
"""Half-integer bounds make each batch size up to 16 the midpoint of its own bucket, so the exported
counts per size and ``_sum`` are exact; sizes above 16 (``max_batch_size`` allows 64) share buckets."""
RTF_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 50, 100, 200]


class NullMetrics:
    def request_finished(self, route: str, status: int, model: str, preset: str | None) -> None: ...

    def batch_finished(self, model: str, size: int, audio_s: float, generation_s: float) -> None: ...

    def queue_wait(self, model: str, seconds: float) -> None: ...

    def queue_depth(self, depth: int) -> None: ...

    def storage_op(self, op: str, seconds: float, ok: bool) -> None: ...


class ServeMetrics(NullMetrics):
    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Gauge, Histogram

        self._requests = Counter(
            "acestep_requests_total",
            description="Finished requests by route, HTTP status, model and preset.",
            tag_keys=("route", "status", "model", "preset"),
        )
        self._batch_size = Histogram(
            "acestep_batch_size",
            description="Items per diffusion batch.",
            boundaries=BATCH_SIZE_BUCKETS,
            tag_keys=("model",),
        )
        self._generation_s = Histogram(
            "acestep_generation_seconds",
            description="Seconds per diffusion batch (sampling and decoding).",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("model",),
        )
        self._audio_s = Counter(
            "acestep_audio_seconds_total",
            description="Seconds of audio generated.",
            tag_keys=("model",),
        )
        self._rtf = Histogram(
            "acestep_realtime_factor",
            description="Audio seconds generated per wall-clock second, per batch.",
            boundaries=RTF_BUCKETS,
            tag_keys=("model",),
        )
        self._queue_wait_s = Histogram(
            "acestep_queue_wait_seconds",
            description="Seconds an item waited before its batch started.",
            boundaries=QUEUE_WAIT_BUCKETS_S,
            tag_keys=("model",),
        )
        self._queue_depth = Gauge("acestep_queue_depth", description="Items waiting for a batch on this replica.")
        self._storage_s = Histogram(
            "acestep_storage_seconds",
            description="Object-store operation latency.",
            boundaries=STORAGE_BUCKETS_S,
            tag_keys=("op", "ok"),
        )

    def request_finished(self, route, status, model, preset):
        self._requests.inc(tags={"route": route, "status": str(status), "model": model, "preset": preset or "none"})

    def batch_finished(self, model, size, audio_s, generation_s):
        tags = {"model": model}
        self._batch_size.observe(size, tags=tags)
        self._generation_s.observe(generation_s, tags=tags)
        self._audio_s.inc(audio_s, tags=tags)
        if generation_s > 0:
            self._rtf.observe(audio_s / generation_s, tags=tags)

    def queue_wait(self, model, seconds):
        self._queue_wait_s.observe(seconds, tags={"model": model})

    def queue_depth(self, depth):
        self._queue_depth.set(depth)

    def storage_op(self, op, seconds, ok):
        self._storage_s.observe(seconds, tags={"op": op, "ok": str(ok).lower()})
