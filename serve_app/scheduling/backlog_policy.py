"""Autoscaling on backlog: as many generator replicas as keep the expected wait under a target.

Each generator replica reports ``backlog_s``, its queued and running work in
estimated GPU seconds, and ``requests``, how many requests it holds
(``Generator.record_autoscaling_stats``). Requests still waiting at callers
(Serve's ``total_queued_requests``) are costed at the replicas' mean GPU
seconds per request. With ``n`` replicas the expected wait is about
``total / n``, so the policy asks for ``ceil(total / target_queue_wait_s)``.

Hysteresis: it scales up as soon as that exceeds the current count, but
down only when the count it would drop to still keeps the wait under
``scale_down_fraction`` of the target, and never below the number of
replicas that still hold work (Serve stops replicas without looking at their
queues). Serve then applies ``upscale_delay_s`` / ``downscale_delay_s`` and
clips to min/max replicas.

Runs on Serve's controller event loop every tick: it only reads the context,
and on any error keeps the current target (a raising policy stalls the
controller). Serve pickles this module by value, so it imports only the
standard library.
"""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger("ray.serve")

BACKLOG_METRIC = "backlog_s"
REQUESTS_METRIC = "requests"


def newest_by_replica(ctx: Any, name: str) -> dict[Any, float]:
    """The newest reported value of metric ``name`` per running replica."""
    raw = (ctx.raw_metrics or {}).get(name) or {}
    newest = {replica: series[-1].value for replica, series in raw.items() if series}
    if newest:
        return newest
    return dict((ctx.aggregated_metrics or {}).get(name) or {})


class BacklogPolicy:
    def __init__(
        self,
        target_queue_wait_s: float = 30.0,
        scale_down_fraction: float = 0.5,
        default_request_cost_s: float = 10.0,
    ) -> None:
        if target_queue_wait_s <= 0 or not 0 < scale_down_fraction <= 1 or default_request_cost_s < 0:
            raise ValueError("need target_queue_wait_s > 0, 0 < scale_down_fraction <= 1, default_request_cost_s >= 0")
        self.target_queue_wait_s = target_queue_wait_s
        self.scale_down_fraction = scale_down_fraction
        self.default_request_cost_s = default_request_cost_s
        """GPU seconds per waiting request while no replica reports any (a cold start)."""
        self._failing = False

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        # Serve keeps its own counters in policy_state: pass them through untouched.
        state = dict(ctx.policy_state or {})
        try:
            desired = self.desired_replicas(ctx)
        except Exception:
            if not self._failing:  # once per failure spell, not on every 0.1 s tick
                logger.exception("backlog policy failed; keeping %s replicas", ctx.target_num_replicas)
            self._failing = True
            return ctx.target_num_replicas, state
        self._failing = False
        return desired, state

    def total_backlog_s(self, ctx: Any) -> tuple[float, int]:
        """Estimated GPU seconds in replicas and at callers, and how many replicas hold work."""
        backlog = newest_by_replica(ctx, BACKLOG_METRIC)
        requests = sum(newest_by_replica(ctx, REQUESTS_METRIC).values())
        in_replicas = sum(backlog.values())
        per_request = in_replicas / requests if requests > 0 and in_replicas > 0 else self.default_request_cost_s
        waiting = (ctx.total_queued_requests or 0) * per_request
        holding = sum(1 for value in backlog.values() if value > 0)
        return in_replicas + waiting, holding

    def desired_replicas(self, ctx: Any) -> int:
        current = ctx.current_num_replicas
        if current == 0:
            return ctx.target_num_replicas  # nothing reports before the first replica runs
        total, holding = self.total_backlog_s(ctx)
        enough = math.ceil(total / self.target_queue_wait_s)
        comfortable = math.ceil(total / (self.target_queue_wait_s * self.scale_down_fraction))
        if enough > current:
            desired = enough
        elif comfortable < current:
            desired = comfortable
        else:
            desired = current
        desired = max(desired, holding)
        return min(max(desired, ctx.capacity_adjusted_min_replicas), ctx.capacity_adjusted_max_replicas)
