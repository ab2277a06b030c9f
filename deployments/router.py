"""``BatchKeyRouter``: Serve's request router for the generator, by batch key and estimated cost.

Thin: ``serve_app.scheduling.key_routing.KeyRanking`` decides; this reads the
plan from the call (Serve resolves arguments before routing), the replicas'
routing stats (``Generator.record_routing_stats``) and the plan's batch cost
(``pipeline.cost``). One instance runs in every process holding a generator
handle (ingress replicas, the job coordinator). It deliberately has no
``FIFOMixin``: that mixin may hand a replica found for one request to an older
request of another key.
"""

from __future__ import annotations

from functools import partial

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from serve_app.generation.load import batch_cap, key_id
from serve_app.pipeline.cost import CostModel
from serve_app.pipeline.registry import get_spec
from serve_app.scheduling.key_routing import BatchCost, KeyRanking, ReplicaView
from serve_app.schemas import GenerationPlan

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_BATCH_AUDIO_S = 480.0


def _plan(pending_request: PendingRequest | None) -> GenerationPlan | None:
    if pending_request is None:
        return None
    for value in (*pending_request.args, *pending_request.kwargs.values()):
        if isinstance(value, GenerationPlan):
            return value
    return None


class BatchKeyRouter(RequestRouter):
    def initialize_state(self, work_weight: float = 6.0) -> None:
        self.ranking = KeyRanking(work_weight=work_weight)
        self._limits = (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_AUDIO_S)
        self._views: dict[str, ReplicaView] = {}

    def _placement(self, plan: GenerationPlan) -> tuple[str, int, int, BatchCost]:
        """The plan's batch key, item count, batch cap and batch cost function."""
        settings = plan.params.batch_settings()
        cost = CostModel(scale=get_spec(settings.model).relative_cost)
        cap = batch_cap(plan.params.audio_duration, *self._limits)
        return key_id(settings), len(plan.params.actual_seeds), cap, partial(cost.estimate, settings)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        plan = _plan(pending_request)
        if plan is None:
            return [candidate_replicas]
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        for replica in candidate_replicas:
            stats = replica.routing_stats or {}
            if "max_batch_size" in stats:
                self._limits = (stats["max_batch_size"], stats["max_batch_audio_s"])
        # Kept for on_request_routed, which learns only the chosen replica's id.
        self._views = {
            replica_id: ReplicaView.from_stats(replica_id, replica.routing_stats)
            for replica_id, replica in by_id.items()
        }
        key, items, cap, batch_cost = self._placement(plan)
        ranks = self.ranking.rank(key, list(self._views.values()), items, cap, batch_cost)
        # Serve ranks many waiting requests before the first is accepted: count this one where it
        # most likely goes, so the next ranking sees it (on_request_routed moves it if it spilled over).
        if ranks:
            token = pending_request.metadata.internal_request_id
            self.ranking.hold(token, key, self._views[ranks[0][0]], items, cap, batch_cost)
        return [[by_id[replica_id] for replica_id in rank] for rank in ranks]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        plan = _plan(pending_request)
        view = self._views.get(replica_id.unique_id)
        if plan is None or view is None:
            return
        key, items, cap, batch_cost = self._placement(plan)
        self.ranking.hold(pending_request.metadata.internal_request_id, key, view, items, cap, batch_cost)
