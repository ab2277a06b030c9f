"""Pipeline throughput: real-time factor and peak memory by steps, duration and batch size.

Every case runs ``MusicPipeline`` (the sampler, guidance and decode that the
generator serves) with the model's serving defaults (guidance, scheduler, ERG)
and the steps, duration and batch size given here. The real-time factor is the
audio generated (duration x batch size) divided by the wall-clock time of the
whole call.

    python benchmarks/bench_pipeline.py                                  # tiny model, CPU
    python benchmarks/bench_pipeline.py --model ace-step-v1-3.5b --full-size --device cuda \\
        --steps 27 60 --durations 60 --batch-sizes 1 8 --json v1.json

``--full-size`` builds the real architecture with random weights (the family's
``build_random(size="full")``), so a GPU can be measured without downloading
weights; speed and memory do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import importlib
import inspect
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from serve_app.pipeline.music_pipeline import MusicPipeline
from serve_app.pipeline.registry import ModelSpec, get_spec
from serve_app.pipeline.settings import ACESTEP_DEFAULTS, BatchSettings, GenerationParams, ItemSettings

DEFAULT_TINY_MODEL = "ace-step-v1-tiny"
PROMPT = "funk, pop, soul, rock, melodic, guitar, drums, bass, keyboard, percussion, 105 BPM, energetic, upbeat"
LYRICS = """[verse]
Neon lights are shining bright
We keep on moving through the night

[chorus]
Turn it up and let it ring
Everybody come and sing
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_TINY_MODEL, help="catalog model name (default: %(default)s)")
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="build the real architecture with random weights instead of loading a checkpoint (for a GPU)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, nargs="+", default=[27, 60])
    parser.add_argument("--durations", type=float, nargs="+", default=[10.0, 30.0], help="seconds of audio")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--compile", action="store_true", help="run the torch.compile'd denoiser")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each case first")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each case (median reported)")
    parser.add_argument("--models-root", type=Path, help="checkpoint folder root (default: the registry's)")
    parser.add_argument("--json", type=Path, help="also write every run and the environment here")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    if args.dtype is None:
        args.dtype = "bf16" if args.device.type == "cuda" else "fp32"
    for name in ("steps", "durations", "batch_sizes"):
        if min(getattr(args, name)) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    try:
        args.spec = get_spec(args.model)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    return args


def random_full_size_loader(spec: ModelSpec):
    """A ``MusicPipeline`` loader that builds the family's real sizes with random weights."""
    family = importlib.import_module(f"serve_app.pipeline.{spec.family}")
    options = {"size": "full"}
    if "variant" in inspect.signature(family.build_random).parameters:
        options["variant"] = spec.name  # e.g. turbo vs base; families without variants take none

    def load(name: str, device: torch.device, dtype: torch.dtype):
        return family.build_random(device=device, dtype=dtype, **options)

    return load


def case(spec: ModelSpec, steps: int, duration: float, batch_size: int, bf16: bool, compiled: bool):
    """The batch the generator would run: the model's serving defaults plus this case's shape."""
    params = GenerationParams(
        **{
            **ACESTEP_DEFAULTS,
            **spec.defaults,
            "model": spec.name,
            "prompt": PROMPT,
            "lyrics": LYRICS,
            "audio_duration": duration,
            "infer_step": steps,
            "actual_seeds": (0,),
            "bf16": bf16,
            "torch_compile": compiled,
        }
    )
    # One item per seed, built directly so batch sizes beyond a request's seed limit can be measured.
    [item] = params.items()
    items = [dataclasses.replace(item, seed=seed) for seed in range(batch_size)]
    return params.batch_settings(), items


class PeakMemory:
    """Peak memory of one call: CUDA allocator peak, or on CPU the resident set's rise."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._baseline = 0

    @property
    def label(self) -> str:
        return "max_memory_allocated" if self.device.type == "cuda" else "peak RSS - RSS before"

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        # Hand memory freed by earlier runs back to the OS, so the baseline is
        # the live set and this run's growth shows (glibc keeps freed pages otherwise).
        _malloc_trim()
        self._baseline = _proc_status_bytes("VmRSS")
        # Resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0).
        Path("/proc/self/clear_refs").write_text("5")

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return _proc_status_bytes("VmHWM") - self._baseline


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline then includes freed but retained memory


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status; the CPU memory probe needs Linux")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(pipeline: MusicPipeline, settings: BatchSettings, items: list[ItemSettings], memory: PeakMemory) -> dict:
    memory.start()
    synchronize(pipeline.device)
    started = time.perf_counter()
    output = pipeline(settings, items)
    synchronize(pipeline.device)
    wall = time.perf_counter() - started
    failed = [item.error for item in output.items if item.waveform is None]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(items)} items failed: {failed[0]}")
    # decode_s starts after a host sync and ends with a copy to the CPU, so it is
    # exact; the pipeline's diffusion clock stops before the GPU queue drains, so
    # diffusion is what the wall clock leaves after decoding.
    decode = output.timings["decode_s"]
    return {"wall_s": wall, "diffusion_s": wall - decode, "decode_s": decode, "peak_bytes": memory.peak_bytes()}


def summarise(runs: list[dict], duration: float, batch_size: int) -> dict:
    wall = statistics.median(run["wall_s"] for run in runs)
    return {
        "wall_s": wall,
        "diffusion_s": statistics.median(run["diffusion_s"] for run in runs),
        "decode_s": statistics.median(run["decode_s"] for run in runs),
        "rtf": duration * batch_size / wall,
        "peak_mib": max(run["peak_bytes"] for run in runs) / 2**20,
    }


def markdown_table(results: list[dict], memory_label: str) -> str:
    header = (
        "| model | device | dtype | steps | audio s | batch | wall s | diffusion s | decode s "
        f"| RTF (audio s / wall s) | peak MiB ({memory_label}) |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in results:
        lines.append(
            f"| {row['model']} | {row['device']} | {row['dtype']} | {row['steps']} | {row['duration_s']:g} "
            f"| {row['batch_size']} | {row['wall_s']:.3f} | {row['diffusion_s']:.3f} | {row['decode_s']:.3f} "
            f"| {row['rtf']:.2f}x | {row['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec, device = args.spec, args.device
    bf16 = args.dtype == "bf16"
    loader = random_full_size_loader(spec) if args.full_size else None
    pipeline = MusicPipeline(spec.name, device, models_root=args.models_root, loader=loader)
    memory = PeakMemory(device)
    label = spec.name + (" (full size, random)" if args.full_size else "") + (" compiled" if args.compile else "")

    started = time.perf_counter()
    pipeline.model(bf16)
    print(f"loaded {label} on {device} in {args.dtype} in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    results, runs_log = [], []
    for duration in args.durations:
        for batch_size in args.batch_sizes:
            for steps in args.steps:
                settings, items = case(spec, steps, duration, batch_size, bf16, args.compile)
                pipeline.check_inputs(settings, items)
                for _ in range(args.warmup):
                    pipeline(settings, items)
                runs = [run_once(pipeline, settings, items, memory) for _ in range(args.repeats)]
                row = {
                    "model": label,
                    "device": device.type,
                    "dtype": args.dtype,
                    "compile": args.compile,
                    "steps": steps,
                    "duration_s": duration,
                    "batch_size": batch_size,
                    **summarise(runs, duration, batch_size),
                }
                results.append(row)
                runs_log.append({**row, "runs": runs})
                print(
                    f"steps={steps} duration={duration:g}s batch={batch_size}: "
                    f"wall {row['wall_s']:.3f} s, RTF {row['rtf']:.2f}x, peak {row['peak_mib']:.0f} MiB",
                    file=sys.stderr,
                )

    if args.json:
        args.json.write_text(json.dumps({"environment": environment(device), "cases": runs_log}, indent=2))
    print(markdown_table(results, memory.label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
