"""Wire formats of the asking side: the generate request and the resolved plan.

``GenerateRequest`` is what a client sends: every field but ``prompt`` is
optional, and ``None`` means "not given" so presets and model defaults can
fill it. ``GenerationPlan`` is what the ingress hands to the generator: every
value decided, nothing left to guess. The answers (results, errors, info
bodies) are in ``responses``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from .audio import AudioFormat
from .pipeline.invalid_field import InvalidField
from .pipeline.registry import CATALOG
from .pipeline.settings import MAX_SEEDS_PER_REQUEST, GenerationParams, OssStep, Seed

OutputSampleRate = Literal[48000, 44100, 32000, 24000, 22050, 16000]
MAX_PROMPT_CHARS = 2000
MAX_NAME_CHARS = 64
"""Model and preset names: echoed in error messages and used as metric tags."""
MAX_LYRICS_CHARS = 10000
MAX_LYRIC_LINE_CHARS = 256
"""Characters in one line of lyrics (a sung line is far shorter): bounds the lyric tokenizer's work per line."""
MAX_AUDIO_DURATION_S = max(spec.max_duration_s for spec in CATALOG.values())
"""The longest any catalog model makes; each model's own range is checked when planning."""

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
        default=None,
        max_length=MAX_NAME_CHARS,
        description="A recipe from GET /presets (balanced, freestyle, precision, draft); request fields override it.",
    )
    model: str | None = Field(
        default=None,
        max_length=MAX_NAME_CHARS,
        description="A served model from GET /models; default: the deployment's first model.",
    )
    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="Tags / style description: genre, instruments, mood, tempo.",
    )
    lyrics: str | None = Field(
        default=None,
        max_length=MAX_LYRICS_CHARS,
        description="Lyrics with [verse], [chorus] ... section tags, one sung line per line; empty or absent for "
        f"instrumental. At most the model's max_lyric_tokens (GET /models) and {MAX_LYRIC_LINE_CHARS} characters a line.",
    )
    audio_duration: float | None = Field(
        default=None,
        strict=True,
        gt=0.0,
        le=MAX_AUDIO_DURATION_S,
        description="Seconds of audio per output (default 60): at least the model's min_duration_s and at most its "
        "max_duration_s (GET /models: 240 for v1, 600 for 1.5).",
    )


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
        description='One output per seed, distinct ints in [0, 2^32) (or a string "1, 2"); random seeds are drawn '
        "(and returned) when absent.",
    )
    batch_size: int | None = Field(
        default=None,
        strict=True,
        ge=1,
        le=MAX_SEEDS_PER_REQUEST,
        description="Number of outputs when actual_seeds is absent.",
    )
    oss_steps: list[OssStep] | None = Field(
        default=None,
        max_length=200,
        description="Run only these 1-based steps of a max(oss_steps)-step schedule (euler, pingpong); sets infer_step.",
    )

    format: AudioFormat | None = Field(
        default=None, description="File format: wav (16-bit, default), flac (24-bit), mp3 (CBR) or ogg (Vorbis)."
    )
    mp3_bitrate_kbps: int | None = Field(
        default=None,
        strict=True,
        ge=32,
        le=320,
        description="mp3 only: a valid MPEG bitrate for the sample rate (default 192, 160 at 24 kHz and below).",
    )
    sample_rate: OutputSampleRate | None = Field(
        default=None, description="Output sample rate in Hz (default 48000, the models' own)."
    )
    output_name: str | None = Field(
        default=None,
        max_length=256,
        description='Object name ("song") or prefix ("albums/summer/") inside the bucket; never a filesystem path.',
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
    """A parameter honoured as ACE-Step defines it although other settings make it inert."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    field: str
    """The request field concerned."""
    message: str
    """Why it has no effect, for humans."""


class GenerationPlan(BaseModel):
    """A request with every decision made: the unit the generator works on."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    preset: str | None
    params: GenerationParams
    output: Output
    warnings: list[ParamWarning] = []
