"""``MusicPipeline``: one model name, its loaded variants, sample then decode.

A pipeline serves one catalog model on one device. The request's ``bf16``
flag selects the variant (bfloat16 or float32 weights), each loaded once on
first use; ``torch_compile`` selects the compiled denoiser of that variant.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .invalid_field import InvalidField
from .protocol import MusicModel
from .registry import get_spec, load_model
from .sampler import Sampler, StepCallback
from .settings import (
    BatchSettings,
    GenerationParams,
    ItemSettings,
    check_item_supported,
    check_supported,
    model_defaults,
)
from .tasks import SOURCE_TASKS

logger = logging.getLogger(__name__)

ModelLoader = Callable[[str, torch.device, torch.dtype], MusicModel]

SOURCE_SEED_MASK = 0x5EED_50CE


def source_seed(seed: int) -> int:
    """The seed of an item's draw from its source's posterior (ACE-Step 1.5's VAE): fixed by the
    item's seed, so a request repeats exactly, yet not the stream of its initial noise."""
    return seed ^ SOURCE_SEED_MASK


NON_FINITE_MESSAGE = (
    "the sampler produced non-finite values for this item (numerical overflow); "
    "try bf16=false or a lower guidance_scale"
)


@dataclass
class ItemOutput:
    seed: int
    waveform: torch.Tensor | None = None
    """Float32 CPU ``(channels, samples)``; ``None`` when the item failed or was cancelled."""
    error: str | None = None
    cancelled: bool = False


@dataclass
class BatchOutput:
    items: list[ItemOutput]
    """One entry per input item, in input order."""
    sample_rate: int
    timings: dict[str, float] = field(default_factory=dict)


class MusicPipeline:
    def __init__(
        self,
        model_name: str,
        device: torch.device | str = "cpu",
        *,
        models_root: Path | None = None,
        max_rows_per_forward: int | None = None,
        loader: ModelLoader | None = None,
    ) -> None:
        self.spec = get_spec(model_name)
        self.device = torch.device(device)
        self.max_rows_per_forward = max_rows_per_forward
        self._loader = loader or (lambda name, dev, dtype: load_model(name, dev, dtype, root=models_root))
        self._variants: dict[torch.dtype, MusicModel] = {}
        self._load_lock = threading.Lock()

    @staticmethod
    def dtype_for(bf16: bool) -> torch.dtype:
        return torch.bfloat16 if bf16 else torch.float32

    def model(self, bf16: bool) -> MusicModel:
        dtype = self.dtype_for(bf16)
        with self._load_lock:
            if dtype not in self._variants:
                started = time.perf_counter()
                self._variants[dtype] = self._loader(self.spec.name, self.device, dtype)
                logger.info(
                    "model %s ready: %s on %s, loaded in %.1f s",
                    self.spec.name,
                    str(dtype).removeprefix("torch."),
                    self.device,
                    time.perf_counter() - started,
                )
            return self._variants[dtype]

    def loaded_variants(self) -> list[torch.dtype]:
        return list(self._variants)

    def check_inputs(self, settings: BatchSettings, items: Sequence[ItemSettings]) -> None:
        """Refuse a batch before any tensor is made."""
        check_supported(settings, self.spec)
        if not items:
            raise InvalidField("actual_seeds", "a batch needs at least one item")
        for item in items:
            check_item_supported(item, self.spec)

    def __call__(
        self,
        settings: BatchSettings,
        items: Sequence[ItemSettings],
        on_step: StepCallback | None = None,
        sources: Sequence[torch.Tensor] | None = None,
    ) -> BatchOutput:
        """``sources``: for the audio-in tasks, each item's source waveform, float
        ``(channels, samples)`` at the model's sample rate (items may share one tensor)."""
        self.check_inputs(settings, items)
        if settings.task.task in SOURCE_TASKS and (sources is None or len(sources) != len(items)):
            raise InvalidField("source", f"task {settings.task.task} needs one source per item")
        model = self.model(settings.bf16)
        outputs = [ItemOutput(seed=item.seed) for item in items]
        timings: dict[str, float] = {}

        with torch.inference_mode():
            started = time.perf_counter()
            source = (
                self._encode_sources(model, settings, items, sources) if settings.task.task in SOURCE_TASKS else None
            )
            timings["encode_s"] = time.perf_counter() - started
            started = time.perf_counter()
            sampled = Sampler(model, self.max_rows_per_forward)(settings, items, on_step, source)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # kernels are asynchronous: time them, not their launch
            timings["diffusion_s"] = time.perf_counter() - started

            finished = set(sampled.items)
            for index, output in enumerate(outputs):
                output.cancelled = index not in finished

            finite = torch.isfinite(sampled.latents.flatten(1)).all(dim=1).tolist()
            decodable = [row for row, ok in enumerate(finite) if ok]
            for row, ok in enumerate(finite):
                if not ok:
                    outputs[sampled.items[row]].error = NON_FINITE_MESSAGE

            started = time.perf_counter()
            if decodable:
                num_samples = round(settings.audio_duration * model.sample_rate)
                waveforms = model.decode(sampled.latents[decodable], num_samples)
                for row, waveform in zip(decodable, waveforms):
                    output = outputs[sampled.items[row]]
                    if torch.isfinite(waveform).all():
                        output.waveform = waveform
                    else:
                        output.error = NON_FINITE_MESSAGE
            timings["decode_s"] = time.perf_counter() - started

        return BatchOutput(items=outputs, sample_rate=model.sample_rate, timings=timings)

    @staticmethod
    def _encode_sources(
        model: MusicModel, settings: BatchSettings, items: Sequence[ItemSettings], sources: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Source latents, one row per item. A tensor shared by several items is encoded once, unless
        the encoder draws: then each item draws from its own seed (``source_seed``)."""
        if not hasattr(model, "encode_audio"):
            raise InvalidField("task", f"{model.family} cannot encode source audio")
        encoded: dict[tuple[int, int | None], torch.Tensor] = {}
        keys = []
        for item, waveform in zip(items, sources):
            seed = source_seed(item.seed) if model.source_encoding_draws else None
            key = (id(waveform), seed)
            if key not in encoded:
                generator = None if seed is None else torch.Generator("cpu").manual_seed(seed)
                encoded[key] = model.encode_audio(waveform, generator)
            keys.append(key)
        latents = torch.cat([encoded[key] for key in keys])
        if latents.shape[model.frame_axis] != settings.task.source_frames:
            raise InvalidField(
                "source",
                f"the source encodes to {latents.shape[model.frame_axis]} frames, "
                f"the batch expects {settings.task.source_frames}",
            )
        return latents

    def warmup(self, bf16: bool, torch_compile: bool = False) -> None:
        """One short generation, so the first request does not pay for lazy
        initialisation (kernels, allocator, compilation): the model's defaults,
        with every step guided when the model guides, at two steps and two seconds."""
        params = GenerationParams(
            **{
                **model_defaults(self.spec),
                "model": self.spec.name,
                "prompt": "warmup",
                "audio_duration": min(2.0, self.spec.max_duration_s),
                "infer_step": 2,
                "actual_seeds": (0,),
                "guidance_interval": 1.0,
                "use_erg_tag": False,
                "use_erg_lyric": False,
                "use_erg_diffusion": False,
                "bf16": bf16,
                "torch_compile": torch_compile,
            }
        )
        self(params.batch_settings(), params.items())
