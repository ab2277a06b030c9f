"""The backlog autoscaling policy and the batch-key ranking, fed plain objects instead of Serve's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from serve_app.scheduling.backlog_policy import BacklogPolicy
from serve_app.scheduling.key_routing import KeyRanking, ReplicaView, place, rendezvous_score

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


def batch_cost(items: int) -> float:
    """One second for a batch of one; each further item 0.6 s (the cost model's shape)."""
    return 1.0 + 0.6 * (items - 1) if items else 0.0


CAP = 4


def rank(ranking: KeyRanking, key: str, views: list[ReplicaView], items: int = 1) -> list[list[str]]:
    return ranking.rank(key, views, items, CAP, batch_cost)


def test_a_plan_joins_a_forming_batch_of_its_key_when_that_is_cheaper_than_a_batch_of_its_own():
    # r1's batch of A (2 items, room 2) starts in 1 s: joining adds 0.6 s of GPU work, opening on idle r0 adds 1 s.
    views = [ReplicaView("r0"), ReplicaView("r1", 3.2, {"A": 2}, {"A": 1.0})]
    assert rank(KeyRanking(work_weight=6), "A", views)[0] == ["r1"]
    # At weight 0 only the plan's own finish counts: 1 s on r0 beats 3.2 s on r1.
    assert rank(KeyRanking(work_weight=0), "A", views)[0] == ["r0"]


def test_a_forming_batch_far_behind_other_work_is_not_joined():
    views = [ReplicaView("r0"), ReplicaView("r1", 22.2, {"A": 2}, {"A": 20.0})]
    assert rank(KeyRanking(), "A", views)[0] == ["r0"]


def test_a_busy_key_spills_over_to_idle_replicas_and_another_key_still_starts_at_once():
    hot = ReplicaView("r0", backlog_s=60.0, forming={"hot": 1}, forming_starts_in_s={"hot": 57.0})
    views = [hot, ReplicaView("r1"), ReplicaView("r2", backlog_s=5.0)]
    assert rank(KeyRanking(), "hot", views)[0] != ["r0"]
    assert rank(KeyRanking(), "cold", views) == [["r1"], ["r2"], ["r0"]]


def test_a_new_batch_goes_where_it_starts_soonest_and_every_replica_is_ranked_once():
    views = replicas(100.0, 4.0, 0.5, 50.0, forming={0: {"A": 3}})
    assert rank(KeyRanking(), "A", views) == [["r2"], ["r1"], ["r3"], ["r0"]]
    for key in ("A", "B"):
        assert sorted(flat(rank(KeyRanking(), key, views, items=9))) == ["r0", "r1", "r2", "r3"]


def test_equal_prices_are_broken_alike_by_every_caller_and_keys_spread():
    views = replicas(0.0, 0.0, 0.0, 0.0)
    expected = max(views, key=lambda view: rendezvous_score("A", view.replica_id)).replica_id
    assert rank(KeyRanking(), "A", views)[0] == [expected]
    assert rank(KeyRanking(), "A", list(reversed(views)))[0] == [expected]  # candidate order is irrelevant
    assert len({rank(KeyRanking(), f"key{n}", views)[0][0] for n in range(40)}) == 4


def test_a_plan_of_several_items_fills_the_forming_batch_and_opens_the_next():
    view = ReplicaView("r0", backlog_s=10.0, forming={"A": 1}, forming_starts_in_s={"A": 2.0})
    placement = place(view, "A", items=3, cap=CAP, batch_cost=batch_cost)
    # 3 forming + 3 new = a full batch (2.8 s) then a batch of 2 (1.6 s), after 2 s of other work.
    assert placement.finish_s == pytest.approx(2.0 + 2.8 + 1.6)
    assert placement.added_s == pytest.approx(2.8 + 1.6 - 2.2)
    assert placement.after.backlog_s == pytest.approx(12.2)
    assert placement.after.forming == {"A": 2}
    assert placement.after.forming_starts_in_s["A"] == pytest.approx(12.2 - 1.6)


def test_a_caller_counts_the_plans_it_holds_until_newer_stats_or_its_memory_run_out():
    clock = Clock()
    ranking = KeyRanking(memory_s=2.0, clock=clock)
    views = replicas(0.0, 0.0, 0.0)
    home = rank(ranking, "A", views)[0][0]
    stats = next(view for view in views if view.replica_id == home)
    for token in range(CAP - 1):  # the stats still show an idle replica, the caller knows a batch forms there
        ranking.hold(token, "A", stats, 1, CAP, batch_cost)
        assert rank(ranking, "A", views)[0] == [home]
    ranking.hold(CAP - 1, "A", stats, 1, CAP, batch_cost)  # that batch is full now: the next one goes elsewhere
    assert rank(ranking, "A", views)[0] != [home]
    newer = [ReplicaView(view.replica_id, 0.01) if view is stats else view for view in views]
    assert rank(ranking, "A", newer)[0] == rank(KeyRanking(), "A", newer)[0]  # newer stats replace the picture
    ranking.hold("late", "A", stats, CAP, CAP, batch_cost)
    clock.now = 2.5
    assert rank(ranking, "A", views)[0] == [home]  # forgotten: only the stats speak


def test_holding_a_plan_again_moves_it_to_the_replica_that_took_it():
    ranking = KeyRanking()
    views = replicas(0.0, 0.0)
    first, second = (rank_[0] for rank_ in rank(ranking, "A", views))
    by_id = {view.replica_id: view for view in views}
    ranking.hold("request", "A", by_id[first], CAP, CAP, batch_cost)  # ranked first: a full batch there
    assert rank(ranking, "B", views)[0] == [second]
    ranking.hold("request", "A", by_id[second], CAP, CAP, batch_cost)  # it spilled over to the other
    assert ranking.observe(by_id[first]) == by_id[first]
    assert ranking.observe(by_id[second]).backlog_s == pytest.approx(batch_cost(CAP))
    assert rank(ranking, "B", views)[0] == [first]


def test_bad_ranking_settings_are_refused():
    with pytest.raises(ValueError):
        KeyRanking(work_weight=-1)
