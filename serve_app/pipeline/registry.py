"""Model names → family, hub repository, defaults and local checkpoint folder.

The catalog is static data, so the ingress can validate a request against a
model (duration limit, ERG support, defaults) without loading it. Loading goes
through ``load_model``: the checkpoint folder is used when complete, a tiny
model is written on first use, and a hub model is downloaded with
``huggingface_hub.snapshot_download`` (which honours ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .tasks import V1_TASKS, V15_TASKS

if TYPE_CHECKING:
    import torch

    from .protocol import MusicModel

MODELS_DIR_ENV = "ACESTEP_MODELS_DIR"
SIMULATED_MODELS_ENV = "ACESTEP_SIMULATED_MODELS"
DEFAULT_MODEL = "ace-step-v1-3.5b"

ALL_ERG = frozenset({"tag", "lyric", "diffusion"})

# Upstream sets no floor (v1 takes any positive length; 1.5's model cards say 10 s).
# Every family and size renders down to a single latent frame and fails only when a
# duration rounds to zero output samples; one second stays well clear of that.
MIN_DURATION_S = 1.0

# Lyric tokens a model reads. ACE-Step v1 was trained on lyrics cut to 4096 tokens
# (upstream's text2music_dataset), inside the 5000 positions its Conformer's relative
# position table is built for. ACE-Step 1.5 encodes at most 2048 lyric tokens
# (diffusers' AceStepPipeline, max_lyric_length) and cuts the rest.
V1_MAX_LYRIC_TOKENS = 4096
V15_MAX_LYRIC_TOKENS = 2048

# Total stride of the 1.5 VAE (acestep_v15/configs.py, checked against the loaded VAE):
# 25 latent frames per second for the real models, 5 for the tiny ones.
V15_HOP = 1920
V15_TINY_HOP = 9600


class ModelUnavailableError(RuntimeError):
    """The weights are not on disk and cannot be downloaded."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    """Subpackage of ``serve_app.pipeline`` that implements the model."""
    description: str
    repo_id: str | None
    """Hugging Face hub repository; ``None`` for tiny models written locally."""
    min_duration_s: float
    max_duration_s: float
    supported_erg: frozenset[str]
    max_lyric_tokens: int
    """Lyric tokens the model reads; longer lyrics are refused before any GPU work."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Parameter defaults that differ from the ACE-Step v1 defaults for this model."""
    guidance_distilled: bool = False
    """Guidance is trained into the weights: the model samples unguided only."""
    tasks: tuple[str, ...] = ("text2music",)
    """The tasks (``serve_app.pipeline.tasks``) this model runs."""
    context_hop: int = 0
    """ACE-Step 1.5: 48 kHz samples per latent frame of its VAE, whose audio-in tasks take
    the source as the denoiser's context; 0 for a family that starts from the source (v1)."""
    tiny: bool = False
    relative_cost: float = 1.0
    """GPU time relative to ACE-Step v1 3.5B on an A100, the calibration of ``cost.CostModel``
    (1.0 where unmeasured); scales the backlog a replica reports."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))


# diffusers' AceStepPipeline is the 1.5 reference: a plain Euler step (omega 0 is a
# gain of exactly 1) and guidance on every step (its cfg interval spans 0..1). Its
# shift 3 and APG (momentum, norm threshold) are our schedule's and v1's already.
_V15_SAMPLING = {"omega_scale": 0.0, "guidance_interval": 1.0}
_V15_TURBO_DEFAULTS = {**_V15_SAMPLING, "infer_step": 8, "guidance_scale": 1.0}
_V15_GUIDED_DEFAULTS = {**_V15_SAMPLING, "infer_step": 50, "guidance_scale": 7.0}
_NO_ERG = {"use_erg_tag": False, "use_erg_lyric": False, "use_erg_diffusion": False}

_SERVED_CATALOG = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ModelSpec(
                name="ace-step-v1-3.5b",
                family="acestep_v1",
                description="ACE-Step v1 3.5B (linear-attention DiT, DCAE + vocoder, UMT5 text encoder).",
                repo_id="ACE-Step/ACE-Step-v1-3.5B",
                min_duration_s=MIN_DURATION_S,
                max_duration_s=240.0,
                supported_erg=ALL_ERG,
                max_lyric_tokens=V1_MAX_LYRIC_TOKENS,
                tasks=V1_TASKS,
            ),
            ModelSpec(
                name="acestep-v15-xl-turbo",
                family="acestep_v15",
                description="ACE-Step 1.5 XL turbo: guidance-distilled, 8 steps.",
                repo_id="ACE-Step/acestep-v15-xl-turbo-diffusers",
                min_duration_s=MIN_DURATION_S,
                max_duration_s=600.0,
                supported_erg=frozenset(),
                max_lyric_tokens=V15_MAX_LYRIC_TOKENS,
                tasks=V15_TASKS,
                context_hop=V15_HOP,
                defaults={**_V15_TURBO_DEFAULTS, **_NO_ERG},
                guidance_distilled=True,
            ),
            ModelSpec(
                name="acestep-v15-xl-base",
                family="acestep_v15",
                description="ACE-Step 1.5 XL base: guided sampling.",
                repo_id="ACE-Step/acestep-v15-xl-base-diffusers",
                min_duration_s=MIN_DURATION_S,
                max_duration_s=600.0,
                supported_erg=frozenset(),
                max_lyric_tokens=V15_MAX_LYRIC_TOKENS,
                tasks=V15_TASKS,
                context_hop=V15_HOP,
                defaults={**_V15_GUIDED_DEFAULTS, **_NO_ERG},
            ),
            ModelSpec(
                name="ace-step-v1-tiny",
                family="acestep_v1",
                description="Tiny random-weight ACE-Step v1 in the official layout (tests, CPU dev mode).",
                repo_id=None,
                min_duration_s=MIN_DURATION_S,
                max_duration_s=240.0,
                supported_erg=ALL_ERG,
                max_lyric_tokens=V1_MAX_LYRIC_TOKENS,
                tasks=V1_TASKS,
                tiny=True,
            ),
            ModelSpec(
                name="acestep-v15-tiny",
                family="acestep_v15",
                description="Tiny random-weight ACE-Step 1.5 in the diffusers layout (tests, CPU dev mode).",
                repo_id=None,
                min_duration_s=MIN_DURATION_S,
                max_duration_s=600.0,
                supported_erg=frozenset(),
                max_lyric_tokens=V15_MAX_LYRIC_TOKENS,
                tasks=V15_TASKS,
                context_hop=V15_TINY_HOP,
                defaults={**_V15_GUIDED_DEFAULTS, **_NO_ERG},
                tiny=True,
            ),
            ModelSpec(
                name="acestep-v15-turbo-tiny",
                family="acestep_v15",
                description="Tiny random-weight ACE-Step 1.5 turbo (tests, CPU dev mode).",
                repo_id=None,
                min_duration_s=MIN_DURATION_S,
                max_duration_s=600.0,
                supported_erg=frozenset(),
                max_lyric_tokens=V15_MAX_LYRIC_TOKENS,
                tasks=V15_TASKS,
                context_hop=V15_TINY_HOP,
                defaults={**_V15_TURBO_DEFAULTS, **_NO_ERG},
                guidance_distilled=True,
                tiny=True,
            ),
        )
    }
)


SIMULATED_MODELS = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ModelSpec(
                name="ace-step-simulated",
                family="simulated",
                description="Simulated ACE-Step v1 on an A100: sleeps for the cost model's time (scale tests only).",
                repo_id=None,
                min_duration_s=MIN_DURATION_S,
                max_duration_s=240.0,
                supported_erg=ALL_ERG,
                max_lyric_tokens=V1_MAX_LYRIC_TOKENS,
            ),
        )
    }
)
"""Never served unless asked for: ``SIMULATED_MODELS_ENV=1`` in every process of the
cluster (driver included) adds them to ``CATALOG``, so the planner and config accept them."""


def _simulated_enabled() -> bool:
    return os.environ.get(SIMULATED_MODELS_ENV, "").lower() in ("1", "true", "yes")


CATALOG: Mapping[str, ModelSpec] = MappingProxyType(
    {**_SERVED_CATALOG, **(SIMULATED_MODELS if _simulated_enabled() else {})}
)


def get_spec(name: str) -> ModelSpec:
    # The simulated models load by name even when not served (unit tests build them directly).
    spec = CATALOG.get(name) or SIMULATED_MODELS.get(name)
    if spec is None:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(CATALOG))}")
    return spec


def models_dir() -> Path:
    configured = os.environ.get(MODELS_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "ace-step-serve" / "models"


def family_module(spec: ModelSpec):
    """The subpackage implementing ``spec`` (cheap to import: it loads torch only when used)."""
    return importlib.import_module(f"{__package__}.{spec.family}")


def checkpoint_dir(spec: ModelSpec, root: Path | None = None) -> Path:
    """Local checkpoint folder for ``spec``, fetched or written when missing."""
    target = (root or models_dir()) / spec.name
    family = family_module(spec)
    if family.is_complete_checkpoint(target):
        return target
    if spec.tiny:
        from .tiny import write_tiny_checkpoint

        return write_tiny_checkpoint(spec.name, target)
    return _download(spec, target)


def _download(spec: ModelSpec, target: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # tqdm progress bars are on by default; they land in the replica's log.
        snapshot_download(repo_id=spec.repo_id, local_dir=target)
    except LocalEntryNotFoundError as exc:
        raise ModelUnavailableError(
            f"weights for {spec.name!r} are not in {target} and the hub is unreachable "
            f"(repository {spec.repo_id}); download them there or unset HF_HUB_OFFLINE"
        ) from exc
    except OSError as exc:
        raise ModelUnavailableError(
            f"could not download {spec.name!r} from repository {spec.repo_id} into {target}: {exc}"
        ) from exc
    return target


def load_model(name: str, device: torch.device | str, dtype: torch.dtype, root: Path | None = None) -> MusicModel:
    """Load ``name`` onto ``device`` in ``dtype`` through its family's loader."""
    import torch

    spec = get_spec(name)
    path = checkpoint_dir(spec, root)
    return family_module(spec).load(path, device=torch.device(device), dtype=dtype, spec=spec)
