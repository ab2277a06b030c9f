"""Turn a client request into a fully resolved ``GenerationPlan``.

Like a router's validation stage: ACE-Step defaults, the model's defaults, the
preset and the request are merged (in that order, the request winning); seeds
are drawn when none are given; every cross-field rule is checked against the
chosen model; and parameters that the other settings make inert are reported
as warnings, so nothing a client sets is silently ignored.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from ..audio import file_extension, resolve_mp3_bitrate
from ..pipeline.invalid_field import InvalidField
from ..pipeline.registry import CATALOG, ModelSpec, get_spec
from ..pipeline.settings import (
    SOURCE_SAMPLE_RATE,
    GenerationParams,
    GuidanceWindow,
    check_item_supported,
    check_supported,
    is_guided,
    model_defaults,
    uses_double_guidance,
)
from ..pipeline.tasks import SOURCE_TASKS, output_duration
from ..schemas import GenerateRequest, GenerationPlan, Output, ParamWarning
from ..sources import SourceInfo
from .lyric_limits import LyricLimits
from .output_names import split_output_name, validate_output_name
from .presets import Preset, PresetBook

DEFAULT_FORMAT = "wav"
DEFAULT_SAMPLE_RATE = 48000

# The parameters each task reads; a task parameter given for another task is inert.
TASK_FIELDS = {
    "text2music": (),
    "retake": ("retake_seeds", "retake_variance"),
    "repaint": ("source", "retake_seeds", "retake_variance", "repaint_start", "repaint_end"),
    "extend": ("source", "retake_seeds", "retake_variance", "repaint_start", "repaint_end"),
    "audio2audio": ("source", "ref_audio_strength"),
    "edit": (
        "source",
        "retake_seeds",
        "edit_target_prompt",
        "edit_target_lyrics",
        "edit_n_min",
        "edit_n_max",
        "edit_n_avg",
    ),
}
# ACE-Step 1.5 (the source as context) samples from each item's own noise: no retake noise.
CONTEXT_TASK_FIELDS = {
    "text2music": (),
    "repaint": ("source", "repaint_start", "repaint_end"),
    "cover": ("source", "audio_cover_strength"),
}
ALL_TASK_FIELDS = frozenset(
    field for table in (TASK_FIELDS, CONTEXT_TASK_FIELDS) for fields in table.values() for field in fields
)


def task_fields(spec: ModelSpec, task: str) -> tuple[str, ...]:
    """The parameters ``task`` reads on ``spec``'s family."""
    return (CONTEXT_TASK_FIELDS if spec.context_hop else TASK_FIELDS)[task]


# Everything that only matters when classifier-free guidance runs.
GUIDANCE_FIELDS = (
    "cfg_type",
    "guidance_interval",
    "guidance_interval_decay",
    "min_guidance_scale",
    "guidance_scale_text",
    "guidance_scale_lyric",
    "use_erg_tag",
    "use_erg_lyric",
    "use_erg_diffusion",
)


class Planner:
    def __init__(
        self,
        presets: PresetBook,
        served_models: Collection[str],
        default_model: str,
        *,
        compile_allowed: bool = False,
    ) -> None:
        """``compile_allowed``: the operator's ``torch_compile`` setting lets a request run the compiled denoiser."""
        unknown = set(served_models) - set(CATALOG)
        if unknown:
            raise ValueError(f"served models not in the catalog: {sorted(unknown)}")
        if default_model not in served_models:
            raise ValueError(f"default model {default_model!r} is not among the served models")
        self.presets = presets
        self.served_models = tuple(served_models)
        self.default_model = default_model
        self.compile_allowed = compile_allowed
        self.lyric_limits = LyricLimits()

    def plan(self, request: GenerateRequest, request_id: str, source: SourceInfo | None = None) -> GenerationPlan:
        """``source``: what the ingress measured of ``request.source`` (for the audio-in tasks)."""
        spec = self._model(request.model)
        preset = self._preset(request.preset)
        given = {
            name: getattr(request, name)
            for name in request.model_fields_set & set(GenerationParams.model_fields)
            if getattr(request, name) is not None
        }
        preset_params = dict(preset.params) if preset else {}
        values: dict[str, Any] = {**model_defaults(spec), **preset_params, **given}
        values["model"] = spec.name
        values["actual_seeds"] = self._seeds(request)
        task = values.get("task", "text2music")
        if task not in spec.tasks:
            raise InvalidField("task", f"{spec.name} offers the tasks {', '.join(spec.tasks)}, not {task}")
        values["retake_seeds"] = self._retake_seeds(request, task_fields(spec, task), len(values["actual_seeds"]))
        if task in SOURCE_TASKS:
            self._resolve_source(values, task, request, source, spec)
            self.lyric_limits.check(spec, values.get("edit_target_lyrics") or "")
        elif request.source is not None:
            raise InvalidField("source", f"task {task} takes no source audio")
        if values["oss_steps"]:
            # ACE-Step runs oss_steps as a subset of a max(oss_steps)-step schedule.
            values["infer_step"] = max(values["oss_steps"])

        def source(field: str) -> str | None:
            return f"preset {preset.name!r}" if preset and field in preset_params and field not in given else None

        try:
            params = GenerationParams(**values)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = str(error["loc"][0]) if error["loc"] else "request"
            raise InvalidField(field, error["msg"]).citing(source(field)) from None
        try:
            check_supported(params.batch_settings(), spec)
            check_item_supported(params.items()[0], spec)
        except InvalidField as exc:
            raise exc.citing(source(exc.field)) from None
        if params.torch_compile and not self.compile_allowed:
            raise InvalidField(
                "torch_compile", "compilation is off on this server (an operator setting); leave it false"
            ).citing(source("torch_compile"))
        self.lyric_limits.check(spec, params.lyrics)

        return GenerationPlan(
            request_id=request_id,
            preset=preset.name if preset else None,
            params=params,
            output=self._output(request),
            warnings=inert_parameter_warnings(params, given),
        )

    def _model(self, name: str | None) -> ModelSpec:
        name = name or self.default_model
        if name not in self.served_models:
            raise InvalidField("model", f"unknown model {name!r}; served models: {', '.join(self.served_models)}")
        return CATALOG[name]

    def _preset(self, name: str | None) -> Preset | None:
        if name is None:
            return None
        try:
            return self.presets.get(name)
        except KeyError:
            raise InvalidField(
                "preset", f"unknown preset {name!r}; known presets: {', '.join(self.presets.names())}"
            ) from None

    @staticmethod
    def _seeds(request: GenerateRequest) -> tuple[int, ...]:
        seeds = request.actual_seeds
        if seeds is None:
            return tuple(secrets.randbelow(2**32) for _ in range(request.batch_size or 1))
        if request.batch_size is not None and request.batch_size != len(seeds):
            raise InvalidField("batch_size", f"is {request.batch_size} but actual_seeds has {len(seeds)} seeds")
        if len(set(seeds)) != len(seeds):
            raise InvalidField("actual_seeds", "seeds must be distinct: the same seed gives the same audio")
        return tuple(seeds)

    @staticmethod
    def _retake_seeds(request: GenerateRequest, fields: tuple[str, ...], count: int) -> tuple[int, ...]:
        """One retake seed per output: drawn when absent; a shorter list repeats its last seed, as upstream."""
        seeds = request.retake_seeds
        if "retake_seeds" not in fields:
            return ()
        if not seeds:
            return tuple(secrets.randbelow(2**32) for _ in range(count))
        if len(seeds) > count:
            raise InvalidField("retake_seeds", f"has {len(seeds)} seeds for {count} outputs")
        return tuple(seeds) + (seeds[-1],) * (count - len(seeds))

    @staticmethod
    def _resolve_source(values: dict, task: str, request: GenerateRequest, source: SourceInfo | None, spec) -> None:
        if request.source is None:
            raise InvalidField("source", f"task {task} needs source audio: an output key or an upload's key")
        if source is None or source.key != request.source.key:
            raise InvalidField("source", "the source was not read; retry")
        if request.audio_duration is not None:
            raise InvalidField("audio_duration", f"is set by the source for task {task}; leave it out")
        values["source_samples"] = source.samples_at(SOURCE_SAMPLE_RATE)
        source_seconds = values["source_samples"] / SOURCE_SAMPLE_RATE
        if source_seconds > spec.max_duration_s:
            raise InvalidField(
                "source", f"is {source_seconds:.1f} s long; {spec.name} takes at most {spec.max_duration_s:g} s"
            )
        if source_seconds < spec.min_duration_s:
            raise InvalidField(
                "source", f"is {source_seconds:.2f} s long; {spec.name} needs at least {spec.min_duration_s:g} s"
            )
        task_settings = GenerationParams.model_construct(**{**values, "task": task}).task_settings()
        values["audio_duration"] = output_duration(task_settings, source_seconds)

    @staticmethod
    def _output(request: GenerateRequest) -> Output:
        fmt = request.format or DEFAULT_FORMAT
        sample_rate = request.sample_rate or DEFAULT_SAMPLE_RATE
        bitrate = None
        if fmt == "mp3":
            try:
                bitrate = resolve_mp3_bitrate(sample_rate, request.mp3_bitrate_kbps)
            except ValueError as exc:
                raise InvalidField("mp3_bitrate_kbps", str(exc)) from None
        elif request.mp3_bitrate_kbps is not None:
            raise InvalidField("mp3_bitrate_kbps", f"applies to format mp3 only, not {fmt}")

        name_field = "output_path" if request.output_path is not None else "output_name"
        name = getattr(request, name_field)
        if name is not None:
            try:
                name = validate_output_name(name)
                split_output_name(name, file_extension(fmt))
            except InvalidField as exc:
                raise exc.renamed(name_field) from None
        return Output(format=fmt, mp3_bitrate_kbps=bitrate, sample_rate=sample_rate, name=name)


def inert_parameter_warnings(params: GenerationParams, given: Mapping[str, Any]) -> list[ParamWarning]:
    """Parameters the client set that ACE-Step's own semantics make inert here.

    Each note names the setting that makes the field inert; the sampler is
    the authority (``serve_app/pipeline/sampler.py``), and the tests check
    that changing a field named here really leaves the audio unchanged.
    """
    notes: dict[str, str] = {}
    steps = params.batch_settings().scheduled_steps
    window = GuidanceWindow(steps, params.guidance_interval)
    if not is_guided(params.guidance_scale):
        for name in GUIDANCE_FIELDS:
            notes[name] = "has no effect: guidance is off because guidance_scale is 0 or 1"
    elif len(window) == 0:
        empty = f"guidance_interval {params.guidance_interval:g} of {steps} scheduled steps is an empty window"
        notes["guidance_interval"] = f"turns guidance off: no step is guided ({empty})"
        for name in ("guidance_scale", *GUIDANCE_FIELDS):
            notes.setdefault(name, f"has no effect: no step is guided ({empty})")
    elif uses_double_guidance(params.guidance_scale_text, params.guidance_scale_lyric):
        replaced = (
            "has no effect: double-condition guidance (guidance_scale_text and guidance_scale_lyric both above 1)"
        )
        notes["guidance_scale"] = f"{replaced} sets the strengths; guidance_scale only switches guidance on"
        for name in ("cfg_type", "guidance_interval_decay", "min_guidance_scale"):
            notes[name] = f"{replaced} replaces the cfg_type combination and its scale schedule"
    else:
        for name in ("guidance_scale_text", "guidance_scale_lyric"):
            notes[name] = (
                "has no effect: double-condition guidance needs both guidance_scale_text and guidance_scale_lyric above 1"
            )
    if len(window) == 1:
        for name in ("guidance_interval_decay", "min_guidance_scale"):
            notes.setdefault(name, "has no effect: the guidance window holds one step, so the scale cannot decay")
    if params.guidance_interval_decay == 0:
        notes.setdefault("min_guidance_scale", "has no effect while guidance_interval_decay is 0")
    if params.use_erg_tag and not params.use_erg_lyric:
        notes.setdefault(
            "use_erg_tag",
            "has no effect without use_erg_lyric: ACE-Step uses the ERG text embedding only inside the ERG lyric pass",
        )
    if params.scheduler_type == "pingpong":
        notes.setdefault("omega_scale", "has no effect: the pingpong scheduler does not use omega_scale")
    if params.oss_steps and given.get("infer_step", params.infer_step) != params.infer_step:
        notes.setdefault("infer_step", f"replaced by max(oss_steps) = {params.infer_step}")
    for name in ALL_TASK_FIELDS - set(task_fields(get_spec(params.model), params.task)):
        notes[name] = f"has no effect for task {params.task}"
    if params.task == "edit":
        for name in (*GUIDANCE_FIELDS, "omega_scale"):
            notes[name] = "has no effect for task edit: flow-edit guides every step with APG, without ERG"
    return [ParamWarning(field=name, message=message) for name, message in notes.items() if name in given]
