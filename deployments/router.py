"""``BatchKeyRouter``: Serve's request router for the generator, by batch key.

Thin: ``serve_app.scheduling.key_routing.KeyRanking`` decides; this reads the
plan from the call (Serve resolves arguments before routing) and the
replicas' routing stats (``Generator.record_routing_stats``). One instance
runs in every process holding a generator handle (ingress replicas, the job
coordinator). It deliberately has no ``FIFOMixin``: that mixin may hand a
replica found for one request to an older request of another key.
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from serve_app.generation.load import batch_cap, key_id
from serve_app.pipeline.cost import CostModel
from serve_app.pipeline.registry import get_spec
from serve_app.scheduling.key_routing import KeyRanking, ReplicaView
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
    def initialize_state(self, join_slack_items: float = 1.0, memory_s: float = 0.5) -> None:
        self.ranking = KeyRanking(memory_s=memory_s)
        self.join_slack_items = join_slack_items
        self._limits = (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BATCH_AUDIO_S)

    def slacks_s(self, plan: GenerationPlan) -> tuple[float, float]:
        """How far above the least loaded replica a plan may join a forming batch of its key
        (``join_slack_items`` items' worth) and open a new one (one item), in estimated GPU seconds."""
        settings = plan.params.batch_settings()
        one_item = CostModel(scale=get_spec(settings.model).relative_cost).estimate(settings, 1)
        return self.join_slack_items * one_item, one_item

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        plan = _plan(pending_request)
        if plan is None:
            return [candidate_replicas]
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        views = []
        for replica in candidate_replicas:
            stats = replica.routing_stats or {}
            if "max_batch_size" in stats:
                self._limits = (stats["max_batch_size"], stats["max_batch_audio_s"])
            views.append(ReplicaView.from_stats(replica.replica_id.unique_id, stats))
        ranks = self.ranking.rank(key_id(plan.params.batch_settings()), views, *self.slacks_s(plan))
        return [[by_id[replica_id] for replica_id in rank] for rank in ranks]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        plan = _plan(pending_request)
        if plan is None:
            return
        cap = batch_cap(plan.params.audio_duration, *self._limits)
        self.ranking.routed(
            key_id(plan.params.batch_settings()), replica_id.unique_id, len(plan.params.actual_seeds), cap
        )
