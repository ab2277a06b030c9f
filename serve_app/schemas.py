"""Wire formats: the generate request, the resolved plan, results and errors.

``GenerateRequest`` is what a client sends: every field but ``prompt`` is
optional, and ``None`` means "not given" so presets and model defaults can
fill it. ``GenerationPlan`` is what the ingress hands to the generator: every
value decided, nothing left to guess.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from .audio import AudioFormat
from .pipeline.invalid_field import InvalidField
from .pipeline.registry import ModelSpec
from .pipeline.settings import MAX_SEEDS_PER_REQUEST, GenerationParams, OssStep, Seed

OutputSampleRate = Literal[48000, 44100, 32000, 24000, 22050, 16000]
MAX_PROMPT_CHARS = 2000
MAX_NAME_CHARS = 64
"""Model and preset names: echoed in error messages and used as metric tags."""
MAX_LYRICS_CHARS = 10000
MAX_LYRIC_LINE_CHARS = 256
"""Characters in one line of lyrics (a sung line is far shorter): bounds the lyric tokenizer's work per line."""

# Fields of ACE-Step's reference servers that a server must not take from clients.
LEGACY_FIELD_HINTS = {
    "checkpoint_path": "not accepted: the server chooses the weights; name a served model with `model` (GET /models)",
    "device_id": "not accepted: the server places work on its GPUs",
    "save_path": "not accepted: outputs go to the object store; use `output_name` to name the object",
    "src_audio_path": "not accepted: source audio never comes from a server path; "
    'pass `source: {"key": ...}` with an output key or an upload\'s key (POST /uploads)',
    "ref_audio_input": "not accepted: source audio never comes from a server path; "
    'use `task: audio2audio` with `source: {"key": ...}` (an output key or POST /uploads)',
    "audio2audio_enable": 'use `task: audio2audio` with `source: {"key": ...}`',
}


class Output(BaseModel):
    """Where and how the audio is written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: AudioFormat = "wav"
    mp3_bitrate_kbps: int | None = None
    """Set exactly when ``format`` is mp3."""
    sample_rate: int
    """Output sample rate in Hz."""
    name: str | None = None
    """An object name or prefix chosen by the client, inside the server's bucket and prefix."""


class _RequestContent(BaseModel):
    """What to make: the head of ``GenerateRequest``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "preset": "balanced",
                    "prompt": "lofi hip hop, mellow piano, vinyl crackle, 80 bpm",
                    "lyrics": "[instrumental]",
                    "audio_duration": 30,
                    "actual_seeds": [42],
                    "format": "mp3",
                }
            ]
        },
    )

    preset: str | None = Field(
        default=None, max_length=MAX_NAME_CHARS, description="A preset from GET /presets; request fields override it."
    )
    model: str | None = Field(default=None, max_length=MAX_NAME_CHARS, description="A served model from GET /models.")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Tags / style description.")
    lyrics: str | None = Field(
        default=None,
        max_length=MAX_LYRICS_CHARS,
        description="Lyrics, one sung line per line; empty for instrumental. At most the model's max_lyric_tokens "
        f"(GET /models) and {MAX_LYRIC_LINE_CHARS} characters a line.",
    )
    audio_duration: float | None = Field(default=None, strict=True, gt=0.0, description="Seconds of audio per output.")


def _optional(name: str) -> tuple[Any, Any]:
    """``GenerationParams``' field ``name`` as a request field: the same type, range and
    description, ``None`` (not given) by default so presets and model defaults can fill it."""
    resolved = GenerationParams.model_fields[name]
    annotation = Annotated[(resolved.annotation, *resolved.metadata)] if resolved.metadata else resolved.annotation
    return annotation | None, Field(default=None, description=resolved.description)


# The sampling parameters a request sets one for one; the content, seeds and steps above
# and below have request forms of their own (strings of seeds, batch_size, ...).
SAMPLING_FIELDS = tuple(
    name
    for name in GenerationParams.model_fields
    if name not in (*_RequestContent.model_fields, "actual_seeds", "oss_steps", "source_samples")
)
_RequestSampling = create_model(
    "_RequestSampling", __base__=_RequestContent, **{name: _optional(name) for name in SAMPLING_FIELDS}
)


class GenerateRequest(_RequestSampling):
    """``POST /generate`` body, and the argument of the ingress handle's ``generate``."""

    actual_seeds: list[Seed] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SEEDS_PER_REQUEST,
        description="One output per seed; random seeds are drawn (and returned) when absent.",
    )
    batch_size: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=MAX_SEEDS_PER_REQUEST,
        description="Number of outputs when actual_seeds is absent.",
    )
    oss_steps: list[OssStep] | None = Field(
        default=None, max_length=200, description="Explicit 1-based step subset of a max(oss_steps)-step schedule."
    )

    format: AudioFormat | None = None
    mp3_bitrate_kbps: int | None = Field(default=None, strict=True, ge=32, le=320)
    sample_rate: OutputSampleRate | None = Field(default=None, description="Output sample rate (default 48000).")
    output_name: str | None = Field(
        default=None, max_length=256, description="Object name or prefix inside the bucket; never a filesystem path."
    )
    output_path: str | None = Field(
        default=None,
        max_length=256,
        description="Legacy field of ACE-Step's API server; mapped to output_name by the same rules.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise InvalidField("prompt", "is blank; describe the music (genre, instruments, mood)")
        return value

    @field_validator("actual_seeds", mode="before")
    @classmethod
    def _seeds_from_int_or_string(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        if isinstance(value, str):
            return _int_list("actual_seeds", value)
        return value

    @field_validator("oss_steps", mode="before")
    @classmethod
    def _steps_from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _int_list("oss_steps", value)
        return value

    @model_validator(mode="after")
    def _one_output_name(self) -> GenerateRequest:
        if self.output_name is not None and self.output_path is not None:
            raise InvalidField("output_path", "give output_name or the legacy output_path, not both")
        return self


def _int_list(field: str, text: str) -> list[int]:
    """ACE-Step's string form of a list: ``"1, 2, 3"``."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise InvalidField(field, "expected integers separated by commas") from None


class ParamWarning(BaseModel):
    field: str
    message: str


class GenerationPlan(BaseModel):
    """A request with every decision made: the unit the generator works on."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    preset: str | None
    params: GenerationParams
    output: Output
    warnings: list[ParamWarning] = []


class OutputFile(BaseModel):
    seed: int
    key: str
    url: str
    format: AudioFormat
    sample_rate: int
    duration: float
    batch_size: int
    """How many items shared this item's forward passes."""
    sidecar_key: str


class ItemFailure(BaseModel):
    seed: int
    message: str


class GenerateResponse(BaseModel):
    request_id: str
    model: str
    preset: str | None
    outputs: list[OutputFile]
    params: dict[str, Any]
    """The resolved parameters (sampling and output): enough to repeat the request exactly."""
    timings: dict[str, float]
    warnings: list[ParamWarning] = []
    failures: list[ItemFailure] = []
    """Seeds that failed (e.g. non-finite values) while others of the request succeeded."""


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    type: str
    message: str
    fields: list[FieldError] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


class PresetInfo(BaseModel):
    name: str
    description: str
    params: dict[str, Any]


class ModelInfo(BaseModel):
    """A catalog entry as ``GET /models`` shows it: the ``ModelSpec`` fields of the same name."""

    name: str
    family: str
    description: str
    repo_id: str | None
    min_duration_s: float
    max_duration_s: float
    supported_erg: list[str]
    max_lyric_tokens: int
    guidance_distilled: bool
    """Samples without guidance: ``guidance_scale`` must be 0 or 1."""
    defaults: dict[str, Any]
    served: bool

    @classmethod
    def from_spec(cls, spec: ModelSpec, served: bool) -> ModelInfo:
        shown = {name: getattr(spec, name) for name in cls.model_fields if name != "served"}
        return cls(
            **{**shown, "supported_erg": sorted(spec.supported_erg), "defaults": dict(spec.defaults)}, served=served
        )
