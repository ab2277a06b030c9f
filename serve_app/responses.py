"""Wire formats of the answers: results, errors, and what the info routes show.

``GenerateResponse`` is what a generation returns (directly or as a job's
``result``); ``ErrorResponse`` wraps every error; ``PresetInfo``, ``ModelInfo``
and ``HealthReport`` are the bodies of ``GET /presets``, ``/models`` and ``/health``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .audio import AudioFormat
from .pipeline.registry import ModelSpec
from .schemas import ParamWarning

EXAMPLE_REQUEST_ID = "9bd56753dc8d41d3b29a987a0ff7d58d"
EXAMPLE_KEY = f"2026-11-25/{EXAMPLE_REQUEST_ID}/42.mp3"


class OutputFile(BaseModel):
    """One stored audio file: one seed of the request."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    seed: int
    """The seed that made this output."""
    key: str
    """Object key in the bucket or output directory."""
    url: str
    """Where to fetch it: a presigned GET URL with MinIO, /outputs/{key} with the local store."""
    format: AudioFormat
    """File format."""
    sample_rate: int
    """Sample rate in Hz."""
    duration: float
    """Seconds of audio."""
    batch_size: int
    """How many items (from this and other requests) shared this item's forward passes."""
    sidecar_key: str
    """Key of the JSON sidecar: resolved parameters, timings and the file's sha256."""


class ItemFailure(BaseModel):
    """A seed that failed while others of the request succeeded."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    seed: int
    """The seed that failed."""
    message: str
    """Why, for humans (e.g. non-finite values; try bf16=false)."""


class GenerateResponse(BaseModel):
    """``POST /generate`` answer, and a succeeded job's ``result``."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {
                    "request_id": EXAMPLE_REQUEST_ID,
                    "model": "ace-step-v1-3.5b",
                    "preset": "balanced",
                    "outputs": [
                        {
                            "seed": 42,
                            "key": EXAMPLE_KEY,
                            "url": f"/outputs/{EXAMPLE_KEY}",
                            "format": "mp3",
                            "sample_rate": 48000,
                            "duration": 30.0,
                            "batch_size": 3,
                            "sidecar_key": f"{EXAMPLE_KEY}.json",
                        }
                    ],
                    "params": {
                        "model": "ace-step-v1-3.5b",
                        "audio_duration": 30.0,
                        "infer_step": 60,
                        "actual_seeds": [42],
                    },
                    "timings": {"queue_s": 0.1, "diffusion_s": 1.9, "decode_s": 0.2, "encode_s": 0.2, "upload_s": 0.01},
                    "warnings": [],
                    "failures": [],
                }
            ]
        },
    )

    request_id: str
    """128 random bits, hex; also the folder of the outputs' keys."""
    model: str
    """The model that generated."""
    preset: str | None
    """The preset applied, if any."""
    outputs: list[OutputFile]
    """One per seed that succeeded."""
    params: dict[str, Any]
    """The resolved parameters (sampling and output): POST them back to repeat the request exactly."""
    timings: dict[str, float]
    """Seconds spent queued, diffusing, decoding, encoding, uploading, and in total."""
    warnings: list[ParamWarning] = []
    """Parameters that other settings make inert."""
    failures: list[ItemFailure] = []
    """Seeds that failed (e.g. non-finite values) while others of the request succeeded."""


class FieldError(BaseModel):
    """One bad field of the request."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    field: str
    """The field, dotted for nested ones (e.g. actual_seeds.3)."""
    message: str
    """What is wrong with it."""


class ErrorBody(BaseModel):
    """What went wrong."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    type: str
    """Machine-readable kind: invalid_request, unauthorized, not_found, conflict, unavailable, generation_failed,
    internal_error."""
    message: str
    """For humans; never a traceback or a server path."""
    fields: list[FieldError] = []
    """The bad fields, for a 422."""


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {...}}``."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    error: ErrorBody
    """The error."""


class PresetInfo(BaseModel):
    """A recipe of the ACE-Step guide."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "draft",
                    "description": "Fast previews: the balanced recipe at 27 steps (ACE-Step's published fast setting).",
                    "params": {"infer_step": 27, "guidance_scale": 15.0, "cfg_type": "apg"},
                }
            ]
        },
    )

    name: str
    """The value of a request's ``preset``."""
    description: str
    """What it is for."""
    params: dict[str, Any]
    """The fields it sets; a request's own fields override them."""


class UploadedSource(BaseModel):
    """``POST /uploads``: the stored source audio, as read from its header."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {
                    "key": "uploads/2026-12-01/3f0c9a51e2b84d0c9c7c2f43b4a1d6e2.wav",
                    "sample_rate": 44100,
                    "channels": 2,
                    "duration": 30.0,
                    "bytes": 5292044,
                }
            ]
        },
    )

    key: str
    """The stored file's key: pass it as ``source: {"key": ...}`` of an audio-in task."""
    sample_rate: int
    """The file's own sample rate in Hz (the generator resamples it to the model's)."""
    channels: int
    """1 or 2."""
    duration: float
    """Seconds of audio in the file."""
    bytes: int
    """The file's size."""


class ModelInfo(BaseModel):
    """A catalog entry as ``GET /models`` shows it: the ``ModelSpec`` fields of the same name."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "ace-step-v1-3.5b",
                    "family": "acestep_v1",
                    "description": "ACE-Step v1 3.5B (linear-attention DiT, DCAE + vocoder, UMT5 text encoder).",
                    "repo_id": "ACE-Step/ACE-Step-v1-3.5B",
                    "min_duration_s": 1.0,
                    "max_duration_s": 240.0,
                    "supported_erg": ["diffusion", "lyric", "tag"],
                    "max_lyric_tokens": 4096,
                    "guidance_distilled": False,
                    "tasks": ["text2music", "retake", "repaint", "extend", "edit", "audio2audio"],
                    "defaults": {"infer_step": 60, "guidance_scale": 15.0, "omega_scale": 10.0},
                    "served": True,
                }
            ]
        },
    )

    name: str
    """The value of a request's ``model``."""
    family: str
    """Model family: the code that runs it."""
    description: str
    """What it is."""
    repo_id: str | None
    """Hugging Face repository of its weights; null for the tiny test models written locally."""
    min_duration_s: float
    """Shortest audio_duration it accepts."""
    max_duration_s: float
    """Longest audio_duration it accepts."""
    supported_erg: list[str]
    """The use_erg_* switches it honours (tag, lyric, diffusion); empty for the 1.5 family."""
    max_lyric_tokens: int
    """Lyric tokens it reads; longer lyrics are refused with a 422 naming lyrics."""
    guidance_distilled: bool
    """Samples without guidance: ``guidance_scale`` must be 0 or 1."""
    tasks: list[str]
    """The values of a request's ``task`` it runs."""
    defaults: dict[str, Any]
    """Its defaults, applied before the preset and the request."""
    served: bool
    """Whether this deployment serves it."""

    @classmethod
    def from_spec(cls, spec: ModelSpec, served: bool) -> ModelInfo:
        shown = {name: getattr(spec, name) for name in cls.model_fields if name != "served"}
        return cls(
            **{**shown, "supported_erg": sorted(spec.supported_erg), "defaults": dict(spec.defaults)}, served=served
        )


class HealthReport(BaseModel):
    """``GET /health``: readiness of the generators, the store and the job coordinator."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={"examples": [{"status": "ok", "generator": "ready", "storage": "ok", "jobs": "ready"}]},
    )

    status: Literal["ok", "unavailable"]
    """ok when every part is; the HTTP status is 200 then, else 503."""
    generator: Literal["ready", "not ready"]
    """Whether a generator replica is running with its model loaded."""
    storage: Literal["ok", "unavailable", "misconfigured"]
    """Whether the object store (or output directory) is reachable and writable; misconfigured: it
    rejects the server's settings (keys, bucket, endpoint), which retrying will not mend."""
    storage_problem: str | None = None
    """With storage misconfigured: what is wrong and which setting to fix."""
    jobs: Literal["ready", "waiting for storage", "unavailable", "disabled"]
    """Whether the job coordinator has read its jobs back from the store and takes new ones."""
    jobs_problem: str | None = None
    """Why jobs are not ready."""
