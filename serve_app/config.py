"""Application settings: the ``args`` of ``serve_config.yaml``.

One validated object, shared by the ingress and the generator, so both build
the same object store and agree on the served models.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .pipeline.registry import CATALOG, DEFAULT_MODEL
from .sources import MAX_SOURCE_BYTES
from .storage import LocalStore, MinioConfig, MinioStore, ObjectStore

OUTPUT_DIR_ENV = "ACESTEP_OUTPUT_DIR"
DEFAULT_OUTPUT_DIR = "~/.cache/ace-step-serve/outputs"


class StorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["auto", "minio", "local"] = "auto"
    """``auto``: MinIO when ``MINIO_ENDPOINT`` is set or ``minio.endpoint`` given, else the local directory."""
    local_root: str = Field(default_factory=lambda: os.environ.get(OUTPUT_DIR_ENV, DEFAULT_OUTPUT_DIR))
    """The local store's directory (single machine only: the ingress serves it at ``/outputs``)."""
    minio: dict[str, Any] = Field(default_factory=dict)
    """Fields of ``MinioConfig``; each one left out comes from its ``MINIO_*`` variable, read where the
    store is built (on each replica). Keep the keys in the environment."""

    @field_validator("minio")
    @classmethod
    def _known_minio_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(MinioConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown storage.minio setting(s) {unknown}; known: {sorted(MinioConfig.model_fields)}")
        return value

    @field_validator("local_root")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Replicas do not share the caller's working directory.
        return str(Path(value).expanduser().resolve())

    def resolved_kind(self) -> Literal["minio", "local"]:
        if self.kind != "auto":
            return self.kind
        return "minio" if self.minio.get("endpoint") or os.environ.get("MINIO_ENDPOINT") else "local"

    def minio_config(self) -> MinioConfig:
        """The section merged with the ``MINIO_*`` variables; errors name the setting and its variable."""
        return MinioConfig(**self.minio)


DeploymentName = Literal["Ingress", "Generator", "JobCoordinator"]


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=lambda: [DEFAULT_MODEL], min_length=1)
    default_model: str | None = None
    device: str = "auto"
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    num_gpus: float = Field(default=1, ge=0)
    """GPUs per generator replica; 0 runs one CPU replica (the dev mode)."""
    presets_path: str | None = None
    storage: StorageSettings = Field(default_factory=StorageSettings)
    output_prefix: str = ""
    """Server-side prefix of every output key inside the bucket or directory."""
    max_source_bytes: int = Field(default=MAX_SOURCE_BYTES, ge=1024)
    """Largest source audio file (upload or stored output) the audio-in tasks accept."""
    max_batch_size: int = Field(default=8, ge=1, le=64)
    max_batch_audio_s: float = Field(default=480.0, gt=0)
    """Seconds of audio per batch: longer durations get smaller batches, so memory stays bounded."""
    batch_wait_s: float = Field(default=0.1, ge=0)
    """How long the first item of a batch may wait for batch-mates while the GPU is free."""
    max_rows_per_forward: int | None = Field(default=None, ge=1)
    warmup: bool = True
    warmup_variants: list[Literal["bf16", "fp32"]] = Field(default_factory=lambda: ["bf16"], min_length=1)
    """Weight variants loaded (and warmed up) at start; another loads on first use."""
    torch_compile: Literal["off", "warmup"] = "off"
    """``warmup``: compile each model's denoiser at start (the warm-up shapes) and let requests ask for it
    with ``torch_compile: true``; ``off``: such a request is a 422. Compiling takes minutes on the GPU
    thread, so it is never started by a request alone."""
    jobs_prefix: str = Field(default="jobs", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    """Key prefix of the job records and pending-upload markers in the store; reserved, so no output
    is written under it."""
    output_ttl_days: int | None = Field(default=None, ge=1)
    """Outputs, their sidecars and job records are deleted this many days after they were written
    (None: kept forever). On MinIO/S3 a bucket lifecycle rule (the store expires them); on the local
    store a sweep every ``maintenance_interval_s``."""
    maintenance_interval_s: float = Field(default=600.0, gt=0)
    """How often the job coordinator removes what failed uploads left and sweeps expired local outputs."""
    abandoned_upload_after_s: float = Field(default=3600.0, gt=0)
    """A request's uploads still unfinished after this long were abandoned (their request failed or
    its replica died): what they left is removed. Keep it above the longest request's upload span."""
    jobs_max_in_flight: int = Field(default=64, ge=1)
    """Jobs sent to the generators at once; the rest wait in the coordinator, in order."""
    webhook_allow_private_networks: bool = False
    """Let job webhooks reach loopback, private and link-local addresses (off: only public hosts)."""
    generate_timeout_s: float = Field(default=60.0, gt=0)
    """How long a caller (the ingress, the job coordinator) waits for a generator replica to take a
    request before giving up with a 503 (no replica placed, every queue full); not a limit on the
    generation itself."""
    autoscaling: Literal["backlog", "requests"] = "backlog"
    """Generator autoscaling: ``backlog`` keeps the expected wait (estimated GPU seconds queued per
    replica) under ``target_queue_wait_s``; ``requests`` is Serve's policy on ongoing requests."""
    target_queue_wait_s: float = Field(default=30.0, gt=0)
    routing: Literal["batch_key", "default"] = "batch_key"
    """Generator routing: ``batch_key`` sends a plan to the replica forming a batch of its key, else
    the least loaded; ``default`` is Serve's power-of-two-choices router."""
    deployment_options: dict[DeploymentName, dict[str, Any]] = Field(default_factory=dict)
    """Per deployment, Serve options merged over the defaults in ``deployments/app.py``
    (dicts such as ``ray_actor_options`` key by key)."""

    @model_validator(mode="after")
    def _known_models(self) -> AppConfig:
        unknown = [name for name in self.models if name not in CATALOG]
        if unknown:
            raise ValueError(f"unknown models {unknown}; known: {sorted(CATALOG)}")
        if self.default_model is None:
            self.default_model = self.models[0]
        elif self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} must be one of models {self.models}")
        return self

    @model_validator(mode="after")
    def _compile_needs_warmup(self) -> AppConfig:
        if self.torch_compile == "warmup" and not self.warmup:
            raise ValueError("torch_compile: warmup compiles during the warm-up; set warmup: true")
        return self

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def make_store(self) -> ObjectStore:
        if self.storage.resolved_kind() == "minio":
            return MinioStore(self.storage.minio_config())
        return LocalStore(Path(self.storage.local_root))
