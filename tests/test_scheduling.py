"""The backlog autoscaling policy and the batch-key ranking, fed plain objects instead of Serve's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from serve_app.scheduling.backlog_policy import BacklogPolicy
from serve_app.scheduling.key_routing import KeyRanking, ReplicaView, rendezvous_score

# ------------------------------------------------------------------ backlog policy


@dataclass
class Sample:
    timestamp: float
    value: float


@dataclass
class Context:
    """The fields of Serve's ``AutoscalingContext`` the policy reads."""

    current_num_replicas: int
    backlog: list[float] = field(default_factory=list)
    """Newest ``backlog_s`` of each running replica."""
    requests: list[float] | None = None
    total_queued_requests: float = 0.0
    target_num_replicas: int = 0
    capacity_adjusted_min_replicas: int = 1
    capacity_adjusted_max_replicas: int = 10
    policy_state: dict[str, Any] = field(default_factory=lambda: {"__decision_counters": 3})

    def __post_init__(self) -> None:
        self.target_num_replicas = self.target_num_replicas or self.current_num_replicas
        requests = self.requests if self.requests is not None else [1.0 if b > 0 else 0.0 for b in self.backlog]
        self.raw_metrics = {
            "backlog_s": {f"r{i}": [Sample(0.0, 99.0), Sample(1.0, b)] for i, b in enumerate(self.backlog)},
            "requests": {f"r{i}": [Sample(1.0, n)] for i, n in enumerate(requests)},
        }
        self.aggregated_metrics = {}


def decide(policy: BacklogPolicy, ctx: Context) -> int:
    replicas, state = policy(ctx)
    assert state == ctx.policy_state  # Serve's own counters pass through
    return replicas


def test_scales_up_to_keep_the_expected_wait_under_the_target():
    policy = BacklogPolicy(target_queue_wait_s=10)
    assert decide(policy, Context(1, backlog=[45.0])) == 5
    assert decide(policy, Context(2, backlog=[10.0, 9.0])) == 2


def test_requests_waiting_at_callers_count_at_the_replicas_mean_cost():
    policy = BacklogPolicy(target_queue_wait_s=10)
    # 20 GPU-s over 4 requests in the replica: 5 s each; 6 more waiting at callers: 30 s.
    assert decide(policy, Context(1, backlog=[20.0], requests=[4], total_queued_requests=6)) == 5
    # Nothing reports yet: the configured default cost per request.
    cold = BacklogPolicy(target_queue_wait_s=10, default_request_cost_s=7)
    assert decide(cold, Context(1, backlog=[0.0], total_queued_requests=3)) == 3


def test_scales_down_only_well_under_the_target_and_never_below_replicas_holding_work():
    policy = BacklogPolicy(target_queue_wait_s=10, scale_down_fraction=0.5)
    assert decide(policy, Context(4, backlog=[9.0, 9.0, 9.0, 9.0])) == 4  # 36 s: 4 would still be needed at half
    assert decide(policy, Context(4, backlog=[5.0, 0.0, 0.0, 0.0])) == 1
    assert decide(policy, Context(4, backlog=[1.0, 1.0, 1.0, 0.0])) == 3  # three still hold work


def test_stays_within_min_and_max_replicas():
    policy = BacklogPolicy(target_queue_wait_s=1)
    assert decide(policy, Context(2, backlog=[500.0, 500.0], capacity_adjusted_max_replicas=4)) == 4
    assert decide(policy, Context(3, backlog=[0.0] * 3, capacity_adjusted_min_replicas=2)) == 2


def test_keeps_the_current_target_before_replicas_run_and_on_any_error():
    policy = BacklogPolicy()
    assert decide(policy, Context(0, target_num_replicas=1)) == 1
    broken = Context(2, backlog=[1.0, 1.0], target_num_replicas=3)
    broken.raw_metrics = {"backlog_s": {"r0": [Sample(0.0, "not a number")]}}
    assert decide(policy, broken) == 3


def test_bad_policy_settings_are_refused():
    with pytest.raises(ValueError, match="target_queue_wait_s"):
        BacklogPolicy(target_queue_wait_s=0)


# ------------------------------------------------------------------ batch-key ranking


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replicas(*backlogs: float, forming: dict[int, dict[str, int]] | None = None) -> list[ReplicaView]:
    forming = forming or {}
    return [ReplicaView(f"r{i}", backlog, forming.get(i, {})) for i, backlog in enumerate(backlogs)]


def flat(ranks: list[list[str]]) -> list[str]:
    return [replica for rank in ranks for replica in rank]


def test_a_replica_forming_a_batch_of_the_key_with_room_comes_first_fullest_first():
    views = replicas(0.0, 5.0, 3.0, forming={1: {"A": 2}, 2: {"A": 5, "B": 1}})
    ranks = KeyRanking().rank("A", views, join_slack_s=10, home_slack_s=1)
    assert ranks[:2] == [["r1"], ["r2"]]
    assert sorted(flat(ranks)) == ["r0", "r1", "r2"]  # every replica stays reachable: a full one spills over


def test_a_forming_batch_too_far_above_the_least_loaded_is_not_joined():
    views = replicas(0.0, 12.0, 3.0, forming={1: {"A": 2}})
    assert KeyRanking().rank("A", views, join_slack_s=10, home_slack_s=1)[0] == ["r0"]


def test_a_forming_batch_that_starts_soon_is_joined_even_on_a_busier_replica():
    starts_soon = ReplicaView("r1", backlog_s=30.0, forming={"A": 3}, forming_starts_in_s={"A": 2.0})
    starts_late = ReplicaView("r2", backlog_s=30.0, forming={"A": 3}, forming_starts_in_s={"A": 25.0})
    ranks = KeyRanking().rank("A", [ReplicaView("r0"), starts_soon, starts_late], join_slack_s=4, home_slack_s=1)
    assert ranks[0] == ["r1"] and ["r2"] not in ranks[:2]


def test_without_a_forming_batch_every_caller_picks_the_same_home_among_the_least_loaded():
    views = replicas(0.0, 0.0, 0.0, 0.0)
    expected = max(views, key=lambda view: rendezvous_score("A", view.replica_id)).replica_id
    assert KeyRanking().rank("A", views, 10, 1)[0] == [expected]
    assert KeyRanking().rank("A", list(reversed(views)), 10, 1)[0] == [expected]  # candidate order is irrelevant
    spread = {KeyRanking().rank(f"key{n}", views, 10, 1)[0][0] for n in range(40)}
    assert len(spread) == 4  # different keys get different homes


def test_a_new_batch_goes_where_it_starts_soonest_and_the_rest_least_loaded_first():
    views = replicas(100.0, 4.0, 0.5, 50.0, forming={0: {"A": 7}})
    ranks = KeyRanking().rank("A", views, join_slack_s=10, home_slack_s=1)
    assert ranks == [["r2"], ["r1"], ["r3"], ["r0"]]


def test_a_caller_remembers_where_it_opened_a_batch_until_the_stats_catch_up():
    clock = Clock()
    ranking = KeyRanking(memory_s=0.5, clock=clock)
    views = replicas(0.0, 0.0, 0.0)
    home = ranking.rank("A", views, 10, 1)[0][0]
    other = next(view.replica_id for view in views if view.replica_id != home)
    ranking.routed("A", other, items=1, cap=3)  # e.g. the home was full, it spilled over
    assert ranking.rank("A", views, 10, 1)[0] == [other]
    ranking.routed("A", other, items=1, cap=3)
    assert ranking.rank("A", views, 10, 1)[0] == [other]
    ranking.routed("A", other, items=1, cap=3)  # that batch is full now
    assert ranking.rank("A", views, 10, 1)[0] == [home]
    ranking.routed("A", other, items=1, cap=3)
    clock.now = 0.6  # forgotten: only the stats speak
    assert ranking.rank("A", views, 10, 1)[0] == [home]


def test_every_replica_is_always_ranked_for_every_key():
    views = replicas(0.0, 30.0, 60.0, forming={1: {"hot": 1}, 2: {"hot": 1}})
    for key in ("hot", "cold"):
        assert sorted(flat(KeyRanking().rank(key, views, 0, 0))) == ["r0", "r1", "r2"]
    assert KeyRanking().rank("cold", views, 0, 0)[0] == ["r0"]
