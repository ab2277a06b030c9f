"""What a generation reports while it runs, shared by the generator and the job coordinator.

Plain data, no torch: the ingress and the coordinator import it without
loading the model stack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

Stage = Literal["queued", "running", "encoding", "done"]
"""Where an item is, in the order it goes through them."""
STAGE_ORDER: dict[str, int] = {stage: index for index, stage in enumerate(get_args(Stage))}


@dataclass(frozen=True)
class Progress:
    """One item's progress; ``step``/``total_steps`` count denoiser evaluations."""

    request_id: str
    item: int
    stage: Stage
    step: int = 0
    total_steps: int = 0


ProgressSink = Callable[[Progress], None]
"""Called from the event loop and from the GPU thread: must be thread-safe and quick."""


class GenerationCancelled(Exception):
    """Every item of the request was cancelled before it finished."""
