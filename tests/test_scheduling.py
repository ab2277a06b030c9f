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
    ranking = KeyRanking()
    views = replicas(0.0, 5.0, 3.0, forming={1: {"A": 2}, 2: {"A": 5, "B": 1}})
    ranks = ranking.rank("A", views)
    assert ranks[:2] == [["r1"], ["r2"]]
    assert sorted(flat(ranks)) == ["r0", "r1", "r2"]  # every replica stays reachable: a full one spills over


def test_without_a_forming_batch_every_caller_picks_the_same_home_among_the_least_loaded():
    views = replicas(0.0, 0.0, 0.0, 0.0)
    expected = max(views, key=lambda view: rendezvous_score("A", view.replica_id)).replica_id
    assert KeyRanking().rank("A", views)[0] == [expected]
    assert KeyRanking().rank("A", list(reversed(views)))[0] == [expected]  # order of candidates does not matter
    spread = {KeyRanking().rank(f"key{n}", views)[0][0] for n in range(40)}
    assert len(spread) == 4  # different keys get different homes


def test_an_overloaded_replica_is_never_preferred_and_the_rest_go_least_loaded_first():
    ranking = KeyRanking(load_slack_s=10)
    views = replicas(100.0, 4.0, 0.0, 50.0, forming={0: {"A": 7}})
    ranks = ranking.rank("A", views)
    assert ranks[0] in (["r1"], ["r2"])  # the home, among those near the least loaded
    assert flat(ranks)[-2:] == ["r3", "r0"]


def test_a_caller_remembers_where_it_opened_a_batch_until_the_stats_catch_up():
    clock = Clock()
    ranking = KeyRanking(memory_s=0.5, clock=clock)
    views = replicas(0.0, 0.0, 0.0)
    home = ranking.rank("A", views)[0][0]
    other = next(view.replica_id for view in views if view.replica_id != home)
    ranking.routed("A", other, items=1, cap=3)  # e.g. the home was full, it spilled over
    assert ranking.rank("A", views)[0] == [other]
    ranking.routed("A", other, items=1, cap=3)
    assert ranking.rank("A", views)[0] == [other]
    ranking.routed("A", other, items=1, cap=3)  # that batch is full now
    assert ranking.rank("A", views)[0] == [home]
    ranking.routed("A", other, items=1, cap=3)
    clock.now = 0.6  # forgotten: only the stats speak
    assert ranking.rank("A", views)[0] == [home]


def test_no_key_is_starved_every_replica_is_always_ranked():
    ranking = KeyRanking(load_slack_s=0)
    views = replicas(0.0, 30.0, 60.0, forming={1: {"hot": 1}, 2: {"hot": 1}})
    for key in ("hot", "cold"):
        assert sorted(flat(ranking.rank(key, views))) == ["r0", "r1", "r2"]
    assert ranking.rank("cold", views)[0] == ["r0"]
