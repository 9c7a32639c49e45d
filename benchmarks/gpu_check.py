r"""The GPU check of issue #12: the CUDA tests and the performance figures in one run, sized to fit in 8 minutes on one
H100/H200 (the first run, on an H200 on 2026-11-30, took 293 s, and the study 328 s more:
``benchmarks/results/2026-11-30-h200.md``), written to ``--out DIR`` as ``gpu_check.json`` and ``gpu_check.md`` (a
Markdown summary).

Parts, in the order they run (the quick and certain first); each is timed and guarded (a failure is recorded with
its traceback and the next part runs), and the two files are rewritten after each part, so that a run cut short
keeps what it measured:

1. ``cuda_tests``: ``python -m pytest -m gpu`` in a subprocess (the tests decorated with ``helpers.needs_cuda``).
2. ``alarm``: the DSC alarm (``benchmarks/bench_alarm.py``: untrained full-size bundle, synthetic 512x512x100 CT at
   0.78x0.78x2.5 mm) per stage: seconds and peak GPU memory; the total over the bare ``segment`` stage, and over the
   stages a segmentation alone needs (all but synthesize, compare and vae).
3. ``sliding_window``: the full-size segmenter's sliding-window inference (the bundle's window, overlap and batch)
   in milliseconds per million voxels and per window, fp32 and bf16, from 128^3 to the alarm CT's working volume
   (399x399x250 at 1 mm).
4. ``streaming_metrics``: `StreamingPixelFailureMetrics` (pooled: the count table, 2^20 bins at most) over 10^9 pixels in chunks of 10^7
   drawn on the GPU (``bench_metrics.make_chunk_on``): seconds and peak GPU memory after 10^8 and 10^9 pixels.
5. ``distributed``: two processes train the segmenter for a few iterations through
   `synthcp3d.engines.distributed.run_distributed` and `run_training`, and must end with identical weights: NCCL at
   full size with two GPUs; with one, gloo on the CPU at the dry run's sizes (ignite puts rank r on cuda:r).
6. ``train_steps``: training steps per second at the bundle's full-size shapes (``bundles/pancreas_ct_synthcp``:
   ``configs/common.yaml`` and each stage's batch size) of the 3D SPADE G + D step (`GanTrainer`), the AH-Net step
   (`SegmenterTrainer`) and the comparator step (`ComparatorTrainer`, frozen G inside), each in fp32 vs bf16 autocast
   (the trainers' ``amp`` flag), eager vs ``torch.compile``, contiguous vs ``channels_last_3d`` (all three are 3D
   conv nets) and cuDNN's heuristics vs ``cudnn.benchmark``; ratios vs fp32 eager. Batches are synthetic and already
   on the device (the steps, not the loading); warm-up steps are not timed; the eager variants run first, the
   compiled ones while the part's time budget (240 s: the first H200 run spent 216 s of its 180 s budget and 293 s in
   all) lasts.
7. ``study`` (only with ``--study``): ``synthcp run pancreas --demo --profile study --device cuda`` in a scratch
   folder (the GPU machine returns at most 8 files), its ``evaluate/report.md`` copied to ``study_report.md``.

``--dry-run`` runs every part at tiny sizes on the CPU (the demo's small networks and settings, smaller still),
skipping only what needs CUDA (bf16 autocast, ``torch.compile``, NCCL, ``pytest -m gpu``, the study) and saying so.
It takes well under a minute on two CPU cores and runs in ``make test`` (``tests/test_gpu_check.py``), so that the
script cannot rot between GPU runs; its timings say nothing about a GPU.

On the GPU machine (torch with CUDA, but no monai, ignite or nibabel, and no network), from the repository root with
the wheels of ``../shared/tools/gpu-wheels.sh`` carried in ``.whl/`` (SimpleITK is not needed: NIfTI only)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && make gpu-check GPU_CHECK_ARGS="--out $OUT"

(without ``make``: ``python3 benchmarks/gpu_check.py --out $OUT``). Elsewhere: ``make gpu-check
GPU_CHECK_ARGS="--out DIR"``, ``python benchmarks/gpu_check.py --out DIR --dry-run``, ``--parts alarm,distributed``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from bench_alarm import prepare_case, run_alarm, total_seconds
from bench_metrics import chunk_sizes, make_chunk_on
from synthcp3d.alarm.bundle_predictor import pancreas_config
from synthcp3d.alarm.predictor import STAGES
from synthcp3d.report import markdown_table
from synthcp3d.study_cli import stage_overrides

ROOT = Path(__file__).resolve().parents[1]
JSON_NAME, MARKDOWN_NAME, STUDY_REPORT_NAME = "gpu_check.json", "gpu_check.md", "study_report.md"


# ================================================================================================================
# sizes
# ================================================================================================================
@dataclass(frozen=True)
class Sizes:
    """How big each part runs: full size (a GPU) or tiny (the dry run on the CPU)."""

    name: str
    demo: bool  # the bundle settings: full size (configs/*.yaml) or the CPU demo's (the bundle's configs/study.yaml)
    extra: Mapping[str, Mapping[str, Any]]  # more settings over those: "common" or stage -> settings
    warmup_steps: int
    timed_steps: int
    train_budget_s: float  # no new training-step measurement starts after this
    ct_shape: tuple[int, int, int]
    ct_voxel: tuple[float, float, float]
    alarm_repeats: int  # the first case warms up
    sw_volumes: tuple[tuple[int, int, int], ...]  # the alarm CT's working volume is added
    sw_repeats: int
    pixels: int
    chunk: int
    dist_iterations: int
    pytest_timeout_s: float


FULL = Sizes(
    name="full size",
    demo=False,
    extra={},
    warmup_steps=3,
    timed_steps=10,
    train_budget_s=240.0,
    ct_shape=(512, 512, 100),
    ct_voxel=(0.78, 0.78, 2.5),
    alarm_repeats=2,
    sw_volumes=((128, 128, 128), (192, 192, 192), (256, 256, 256)),
    sw_repeats=2,
    pixels=10**9,
    chunk=10**7,
    dist_iterations=3,
    pytest_timeout_s=240.0,
)
DRY = Sizes(
    name="dry run",
    demo=True,
    extra={  # smaller still than the demo: small sizes every network takes (cf. tests/test_alarm_bundle.py)
        "common": {
            "roi_size": [32, 32, 32],
            "sw_roi_size": [32, 32, 32],
            "unet_features": [8, 8, 16, 32, 64, 8],
            "generator_channels": [16, 8],
            "generator_spade_hidden": 8,
            "discriminator_channels": 8,
            "comparator_channels": [8, 16, 32, 64],
            "vae_channels": [4, 8, 16, 32],
            "vae_latent": 8,
        },
        "train_synthesizer": {"batch_size": 1},
        "train_comparator": {"batch_size": 2},
    },
    warmup_steps=1,
    timed_steps=1,
    train_budget_s=120.0,
    ct_shape=(64, 64, 24),
    ct_voxel=(0.78, 0.78, 2.5),
    alarm_repeats=1,
    sw_volumes=((32, 32, 32),),
    sw_repeats=1,
    pixels=10**6,
    chunk=10**5,
    dist_iterations=2,
    pytest_timeout_s=0.0,
)


def size_overrides(sizes: Sizes, stage: str = "common") -> dict[str, Any]:
    """The bundle settings of ``stage`` at ``sizes`` over ``configs/*.yaml`` (the demo's merge order)."""
    return stage_overrides("pancreas", stage, {}, sizes.demo, sizes.extra)


def working_shape(shape: Sequence[int], voxel: Sequence[float], spacing: Sequence[float]) -> tuple[int, int, int]:
    """The voxels of a ``shape`` volume of ``voxel`` mm once resampled to ``spacing`` mm (the alarm's working grid)."""
    return tuple(int(round(n * v / s)) for n, v, s in zip(shape, voxel, spacing))


# ================================================================================================================
# the run: parts, their results, the two files
# ================================================================================================================
class Skipped(Exception):
    """Raised by a part that does not apply here (the message says why)."""


@dataclass
class Check:
    """What every part gets: where to write, how big, on which device, and a scratch folder."""

    out: Path
    sizes: Sizes
    device: torch.device
    scratch: Path
    study: bool = False
    study_timeout_s: float = 600.0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def overrides(self, stage: str = "common") -> dict[str, Any]:
        """The bundle settings of ``stage`` at this check's size."""
        return size_overrides(self.sizes, stage)

    def config(self, stage: str | None = None) -> Any:
        """The pancreas bundle's config parser (``common.yaml`` [+ ``<stage>.yaml``]) at this check's size."""
        return pancreas_config(self.scratch / "config", self.overrides(stage or "common"), stage)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


@dataclass
class Part:
    """What a part reports: a table (``rows[name][column]``), notes, headline figures, and failed measurements."""

    columns: list[tuple[str, str]] = field(default_factory=list)
    first: str = "case"
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def guard(self, row: str) -> Iterator[None]:
        """Record an exception in the block as the failure of one row (the part goes on with the next row)."""
        try:
            yield
        except Exception as err:  # one measurement's failure must not stop the others
            self.rows.setdefault(row, {})["status"] = f"failed: {type(err).__name__}"
            self.errors.append(f"{row}:\n{traceback.format_exc()}")
            print(f"  {row}: failed ({type(err).__name__}: {err})", flush=True)


def run_part(name: str, fn: Callable[[Check, Part], None], check: Check) -> dict[str, Any]:
    """Run one part, timed; its status is ok, skipped (with the reason) or failed (with the traceback)."""
    part = Part()
    status, reason, tracebacks = "ok", "", []
    print(f"[{name}] ...", flush=True)
    start = time.perf_counter()
    try:
        fn(check, part)
    except Skipped as skip:
        status, reason = "skipped", str(skip)
    except Exception as err:  # one part's failure must not stop the others
        status, reason, tracebacks = "failed", f"{type(err).__name__}: {err}", [traceback.format_exc()]
    finally:
        with contextlib.suppress(Exception):  # after a CUDA error this raises again: it is recorded already
            check.sync()
        seconds = time.perf_counter() - start
        gc.collect()
        if check.cuda:
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    if part.errors:
        status = "failed"
        reason = "; ".join(filter(None, [reason, f"{len(part.errors)} measurement(s) failed (see the table)"]))
        tracebacks = part.errors + tracebacks
    print(f"[{name}] {status} in {seconds:.1f} s" + (f": {reason}" if reason else ""), flush=True)
    return {
        "status": status,
        "reason": reason,
        "seconds": seconds,
        "columns": part.columns,
        "first": part.first,
        "rows": part.rows,
        "notes": part.notes,
        "figures": part.figures,
        "tracebacks": tracebacks,
    }


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the device the figures were measured on."""
    import ignite
    import monai

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device=props.name,
            device_memory_gib=props.total_memory / 2**30,
            compute_capability=f"{props.major}.{props.minor}",
            device_count=torch.cuda.device_count(),
        )
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads"
    return info


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.3g}"
    return " ".join(str(value).split()).replace("|", "\\|")  # one table cell: one line, no column break


def summary_markdown(result: Mapping[str, Any]) -> str:
    """The Markdown summary: device and versions, one row per part, then one section per part."""
    env = result["environment"]
    memory = f", {env['device_memory_gib']:.0f} GiB" if "device_memory_gib" in env else ""
    lines = [
        "# GPU check",
        "",
        f"- device: {env['device']}{memory}; {env['cpu_count']} CPU cores",
        f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, MONAI {env['monai']}, "
        f"ignite {env['ignite']}, Python {env['python']}",
        f"- cudnn.benchmark {env['cudnn_benchmark']} (the project's default), cuDNN TF32 {env['cudnn_allow_tf32']}, "
        f"float32 matmul precision {env['float32_matmul_precision']}",
        f"- sizes: {result['sizes']}; started {result['started']}; {result['total_seconds']:.0f} s in all",
    ]
    if result["dry_run"]:
        lines.append("- **dry run**: tiny sizes on the CPU; its timings say nothing about a GPU")
    lines.append("- absolute times as measured on this device; ratios from this one run")
    parts = result["parts"]
    overview = {
        name: {"status": p["status"], "seconds": f"{p['seconds']:.1f}", "reason": _cell(p["reason"] or "")}
        for name, p in parts.items()
    }
    lines += ["", markdown_table(overview, [("status", "status"), ("seconds", "seconds"), ("reason", "note")], "part")]
    for name, p in parts.items():
        reason = f": {p['reason']}" if p["reason"] else ""
        lines += ["", f"## {name}", "", f"**{p['status']}** in {p['seconds']:.1f} s{reason}"]
        if p["rows"] and p["columns"]:
            rows = {key: {col: _cell(row.get(col)) for col, _ in p["columns"]} for key, row in p["rows"].items()}
            lines += ["", markdown_table(rows, p["columns"], p["first"])]
        if p["notes"]:
            lines += [""] + [f"- {note}" for note in p["notes"]]
        for trace in p["tracebacks"]:
            lines += ["", "```", trace.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_results(out: Path, result: Mapping[str, Any]) -> None:
    (out / JSON_NAME).write_text(json.dumps(result, indent=2, default=str))
    (out / MARKDOWN_NAME).write_text(summary_markdown(result))


def run_check(
    out: Path, dry_run: bool, parts: Sequence[str] | None = None, study: bool = False, study_timeout_s: float = 600.0
) -> dict[str, Any]:
    """Run ``parts`` (default: all, in order) and write ``gpu_check.json`` and ``gpu_check.md`` into ``out``."""
    chosen = list(PARTS) if parts is None else list(parts)
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; parts: {', '.join(PARTS)}")
    device = torch.device("cpu" if dry_run else "cuda")
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if dry_run:  # tiny ops on a busy machine: one thread avoids spin-waiting (as tests/conftest.py's one_thread)
        torch.set_num_threads(1)
    try:
        return _run_parts(out, dry_run, chosen, device, study, study_timeout_s)
    finally:
        torch.set_num_threads(threads)


def _run_parts(
    out: Path, dry_run: bool, chosen: Sequence[str], device: torch.device, study: bool, study_timeout_s: float
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "dry_run": dry_run,
        "sizes": (DRY if dry_run else FULL).name,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "environment": environment(device),
        "total_seconds": 0.0,
        "parts": {},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        check = Check(out, DRY if dry_run else FULL, device, Path(scratch), study, study_timeout_s)
        for name in (p for p in PARTS if p in chosen):
            result["parts"][name] = run_part(name, PARTS[name], check)
            result["total_seconds"] = time.perf_counter() - start
            write_results(out, result)
    return result


# ================================================================================================================
# the CUDA tests
# ================================================================================================================
def pytest_counts(output: str) -> dict[str, int]:
    """``{"passed": n, "failed": n, ...}`` from pytest's last summary line."""
    outcome = re.compile(r"\d+ (passed|failed|deselected|skipped|errors?)|no tests ran")
    summary = next((line for line in reversed(output.splitlines()) if outcome.search(line)), "")
    return {word if word != "error" else "errors": int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}


def part_cuda_tests(check: Check, part: Part) -> None:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", "tests"]
    part.notes.append("command: `" + " ".join(command[2:]) + "` (collection errors do not stop the run)")
    if not check.cuda:
        raise Skipped("needs CUDA (`pytest -m gpu` would only skip its tests here)")
    done = subprocess.run(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=check.sizes.pytest_timeout_s,
    )
    counts = pytest_counts(done.stdout)
    part.columns, part.first = [("count", "tests")], "outcome"
    part.rows = {word: {"count": n} for word, n in counts.items() if word not in ("in", "warnings", "warning")}
    problems = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR", "SKIPPED"))]
    part.notes += problems
    part.figures = {"returncode": done.returncode, "counts": counts, "output_tail": done.stdout.splitlines()[-80:]}
    if done.returncode != 0 or counts.get("failed") or counts.get("errors"):
        raise RuntimeError(f"pytest exit status {done.returncode}: {counts}")


# ================================================================================================================
# training steps
# ================================================================================================================
class Variant(NamedTuple):
    name: str
    bf16: bool
    channels_last: bool
    compiled: bool
    cudnn_benchmark: bool = False  # let cuDNN time its convolution algorithms (the project's default: heuristics)


# eager first: compile time is the unknown, so the compiled variants use what is left of the part's budget. The
# cudnn.benchmark variants ask whether the AH-Net step's bf16 slowdown of the first H200 run (0.72x fp32) is cuDNN's
# heuristic choice of 3D bf16 kernels.
VARIANTS = (
    Variant("fp32 eager", False, False, False),
    Variant("fp32 channels_last_3d", False, True, False),
    Variant("bf16 eager", True, False, False),
    Variant("bf16 channels_last_3d", True, True, False),
    Variant("fp32 cudnn.benchmark", False, False, False, True),
    Variant("bf16 cudnn.benchmark", True, False, False, True),
    Variant("bf16 compile", True, False, True),
    Variant("fp32 compile", False, False, True),
)
STEP_KINDS = {  # kind -> (stage config, label)
    "gan": ("train_synthesizer", "GAN step (3D SPADE G + D)"),
    "segmenter": ("train_segmenter", "segmenter step"),
    "comparator": ("train_comparator", "comparator step (+ frozen G)"),
}


def unsupported(variant: Variant, device: torch.device) -> str:
    """Why ``variant`` is not measured on ``device`` ("" if it is)."""
    needs_cuda = variant.bf16 or variant.compiled or variant.cudnn_benchmark
    return "needs CUDA" if device.type != "cuda" and needs_cuda else ""


def synthetic_batch(
    shape: Sequence[int], batch: int, num_classes: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """``image (B, 1, *shape)`` in [-1, 1] that follows ``label (B, 1, *shape)`` (random classes), and ``pred``: the
    label with about 10% of the voxels changed."""
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, num_classes, (batch, 1, *shape), generator=g)
    image = (2.0 * label / (num_classes - 1) - 1.0 + 0.1 * torch.randn(label.shape, generator=g)).clamp(-1, 1)
    flip = torch.rand(label.shape, generator=g) < 0.1
    pred = torch.where(flip, torch.randint(0, num_classes, label.shape, generator=g), label)
    return {"image": image.to(device), "label": label.to(device), "pred": pred.to(device)}


def _prepare(net: torch.nn.Module, device: torch.device, variant: Variant) -> torch.nn.Module:
    net = net.to(device)
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    return net


def _compiled(net: torch.nn.Module, variant: Variant) -> torch.nn.Module:
    return torch.compile(net) if variant.compiled else net


def build_trainer(kind: str, check: Check, variant: Variant, iterations: int) -> tuple[Any, str]:
    """The ``kind`` trainer over ``iterations`` copies of one synthetic full-size batch; returns it and a shape note."""
    from synthcp3d.engines.comparator import ComparatorTrainer
    from synthcp3d.engines.gan import GanTrainer
    from synthcp3d.engines.segmentation import SegmenterTrainer
    from synthcp3d.networks.comparator import comparator_loss
    from synthcp3d.networks.gan_losses import make_gan_optimizers
    from synthcp3d.workflows.protocol import SegmenterRecipe

    cfg = check.config(STEP_KINDS[kind][0])
    device, n = check.device, cfg["num_classes"]
    common = {"amp": variant.bf16, "epoch_length": iterations}
    if kind == "gan":
        g = _prepare(cfg.get_parsed_content("generator")(), device, variant)
        d = _prepare(cfg.get_parsed_content("discriminator")(), device, variant)
        opt_g, opt_d = make_gan_optimizers(g, d, lr_g=cfg["lr_g"], lr_d=cfg["lr_d"])
        batch = synthetic_batch(cfg["roi_size"], cfg["batch_size"], n, device)
        trainer = GanTrainer(
            device, [batch] * iterations, _compiled(g, variant), _compiled(d, variant), opt_g, opt_d, num_classes=n,
            feature_matching_weight=cfg["feature_matching_weight"],
            reconstruction_weight=cfg["reconstruction_weight"], **common,
        )
    elif kind == "segmenter":
        net = _prepare(cfg.get_parsed_content("segmenter")(), device, variant)
        recipe = SegmenterRecipe(**cfg["segmenter_recipe"])
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=recipe.weight_decay)
        batch = synthetic_batch(cfg["patch_size"], cfg["batch_size"] * cfg["num_samples"], n, device)
        trainer = SegmenterTrainer(
            device, [batch] * iterations, _compiled(net, variant), optimizer, loss_function=recipe.loss().to(device),
            **common,
        )
    else:
        net = _prepare(cfg.get_parsed_content("comparator")(), device, variant)
        g = _prepare(cfg.get_parsed_content("generator")(), device, variant)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=1e-4)
        batch = synthetic_batch(cfg["roi_size"], cfg["batch_size"], n, device)
        trainer = ComparatorTrainer(
            device, [batch] * iterations, _compiled(net, variant), optimizer, num_classes=n,
            generator=_compiled(g, variant), metric="dice",
            loss_function=functools.partial(comparator_loss, quality_loss=cfg["quality_loss"]), **common,
        )
    shape = "x".join(map(str, batch["image"].shape))
    return trainer, f"{STEP_KINDS[kind][1]}: batch {shape} (`{STEP_KINDS[kind][0]}` settings)"


def time_steps(trainer: Any, warmup: int, check: Check) -> tuple[float, float]:
    """Run ``trainer`` over its epoch; return (seconds of the steps after ``warmup``, seconds of the warm-up)."""
    from ignite.engine import Events

    marks: dict[str, float] = {}

    @trainer.on(Events.ITERATION_COMPLETED(once=warmup))
    def _warm(_: Any) -> None:
        check.sync()
        marks["warm"] = time.perf_counter()

    start = time.perf_counter()
    trainer.run()
    check.sync()
    return time.perf_counter() - marks["warm"], marks["warm"] - start


def measure_step(kind: str, check: Check, variant: Variant) -> dict[str, Any]:
    """Steps per second of one trainer variant, its warm-up seconds and peak GPU memory."""
    sizes = check.sizes
    if check.cuda:
        torch.cuda.reset_peak_memory_stats(check.device)
    trainer, shape = build_trainer(kind, check, variant, sizes.warmup_steps + sizes.timed_steps)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark or benchmark
    try:
        seconds, warmup = time_steps(trainer, sizes.warmup_steps, check)
    finally:
        torch.backends.cudnn.benchmark = benchmark
        del trainer
        if variant.compiled:
            torch._dynamo.reset()
        gc.collect()
    row = {"steps_per_s": sizes.timed_steps / seconds, "ms_per_step": 1000.0 * seconds / sizes.timed_steps,
           "warmup_s": warmup, "shape": shape}
    if check.cuda:
        row["peak_gib"] = torch.cuda.max_memory_allocated(check.device) / 2**30
        torch.cuda.empty_cache()
    return row


def part_train_steps(check: Check, part: Part) -> None:
    sizes = check.sizes
    part.first = "step / variant"
    part.columns = [("status", "status"), ("steps_per_s", "steps/s"), ("ms_per_step", "ms/step"),
                    ("vs_fp32_eager", "× fp32 eager"), ("warmup_s", "warm-up s"), ("peak_gib", "peak GPU GiB")]
    keys = {(kind, v): f"{label} / {v.name}" for kind, (_, label) in STEP_KINDS.items() for v in VARIANTS}
    part.rows = {key: {"status": "not run"} for key in keys.values()}  # kind-major order for the table
    deadline = time.perf_counter() + sizes.train_budget_s
    shapes: dict[str, str] = {}
    for variant in VARIANTS:
        for kind in STEP_KINDS:
            key = keys[kind, variant]
            reason = unsupported(variant, check.device)
            if not reason and time.perf_counter() > deadline:
                reason = f"the part's time budget ({sizes.train_budget_s:.0f} s) was spent"
            if reason:
                part.rows[key]["status"] = f"skipped: {reason}"
                continue
            with part.guard(key):
                row = measure_step(kind, check, variant)
                shapes[kind] = row.pop("shape")
                part.rows[key] = row = {"status": "ok", **row}
                baseline = part.rows[keys[kind, VARIANTS[0]]].get("steps_per_s")
                row["vs_fp32_eager"] = row["steps_per_s"] / baseline if baseline else None
                print(f"  {key}: {row['steps_per_s']:.3g} steps/s, {_cell(row['vs_fp32_eager'])}x fp32 eager "
                      f"(warm-up {row['warmup_s']:.1f} s)", flush=True)
    part.notes += list(shapes.values())
    part.notes.append(f"{sizes.warmup_steps} warm-up step(s) (compilation included), then {sizes.timed_steps} timed "
                      "step(s); batches synthetic and already on the device; Adam as in the stages")
    if check.cuda:
        part.notes.append("fp32 = torch's defaults: cuDNN may use TF32 in convolutions, matmuls stay fp32")
    else:
        part.notes.append("skipped on the CPU: bf16 (the trainers' amp flag autocasts on CUDA only) and torch.compile "
                          "(measured on the GPU only)")
    part.figures = {key: row.get("vs_fp32_eager") for key, row in part.rows.items()}


# ================================================================================================================
# the DSC alarm
# ================================================================================================================
def part_alarm(check: Check, part: Part) -> None:
    sizes = check.sizes
    folder = check.scratch / "alarm"
    bundle, source = prepare_case(folder, check.overrides(), sizes.ct_shape, sizes.ct_voxel)
    timer = run_alarm(bundle, source, folder / "out", check.device.type, sizes.alarm_repeats)
    total = total_seconds(timer)
    memory = ("peak_gpu_mib", "peak GPU MiB") if check.cuda else ("peak_rss_mib", "peak RSS MiB")
    part.first = "stage"
    part.columns = [("seconds", "seconds"), ("share", "% of total"), memory]
    peaks = timer.peak_gpu_mb if check.cuda else timer.peak_rss_mb
    for stage in (s for s in STAGES if s in timer.seconds):
        seconds = timer.seconds[stage]
        part.rows[stage] = {"seconds": seconds, "share": 100.0 * seconds / total, memory[0]: peaks.get(stage)}
    part.rows["total"] = {"seconds": total, "share": 100.0, memory[0]: max(peaks.values(), default=None)}
    segment = timer.seconds["segment"]
    segmentation_only = total - sum(timer.seconds.get(s, 0.0) for s in ("synthesize", "compare", "vae"))
    part.figures = {
        "total_s": total,
        "segment_s": segment,
        "total_over_segment_stage": total / segment,
        "total_over_segmentation_only": total / segmentation_only,
        "peak_gpu_mib": max(timer.peak_gpu_mb.values(), default=None),
    }
    part.notes += [
        f"CT {'x'.join(map(str, sizes.ct_shape))} at {sizes.ct_voxel} mm (synthetic, int16 NIfTI), untrained "
        f"{'demo' if sizes.demo else 'full'}-size bundle; case {sizes.alarm_repeats} of {sizes.alarm_repeats} run "
        "back to back (the earlier ones warm up)",
        f"total / bare `segment` stage: {total / segment:.2f}x; total / the stages a segmentation alone needs "
        f"(all but synthesize, compare, vae: {segmentation_only:.2f} s): {total / segmentation_only:.2f}x",
    ]


# ================================================================================================================
# sliding-window cost per voxel
# ================================================================================================================
class WindowCounter(torch.nn.Module):
    """A network that counts the windows (batch items) it is given: ``(B, C, *S)`` -> ``network``'s output."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network, self.windows = network, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.network(x)


def part_sliding_window(check: Check, part: Part) -> None:
    from synthcp3d.engines.inference import sliding_window_segment

    sizes, device = check.sizes, check.device
    cfg = check.config()
    net = WindowCounter(cfg.get_parsed_content("segmenter")().to(device)).eval()
    roi = cfg["sw_roi_size"] or cfg["patch_size"]
    working = working_shape(sizes.ct_shape, sizes.ct_voxel, cfg["spacing"])
    volumes = sorted({*sizes.sw_volumes, working}, key=math.prod)
    part.first = "precision / volume"
    # per voxel and per window: how the overlapping windows tile a volume changes the windows per voxel (the H200 run
    # of 2026-11-30 had 1.4-2.7 per Mvoxel) and with it the cost per voxel; the cost per window is the network's own
    part.columns = [("status", "status"), ("mvoxels", "Mvoxels"), ("windows", "windows"), ("seconds", "seconds"),
                    ("ms_per_mvoxel", "ms / Mvoxel"), ("vs_smallest", "× smallest volume"),
                    ("ms_per_window", "ms / window")]
    infer = functools.partial(sliding_window_segment, network=net, roi_size=roi, sw_batch_size=cfg["sw_batch_size"],
                              overlap=cfg["sw_overlap"])
    for bf16 in (False, True):
        precision = "bf16" if bf16 else "fp32"
        if bf16 and not check.cuda:
            part.rows[f"{precision} (all volumes)"] = {"status": "skipped: needs CUDA (bf16 autocast)"}
            continue
        first = None
        for shape in volumes:
            key = f"{precision} {'x'.join(map(str, shape))}"
            with part.guard(key):
                image = torch.rand((1, 1, *shape), device=device) * 2 - 1
                if first is None:
                    infer(image, amp=bf16)  # warm-up (cuDNN plans, allocator)
                check.sync()
                net.windows = 0
                start = time.perf_counter()
                for _ in range(sizes.sw_repeats):
                    infer(image, amp=bf16)
                check.sync()
                seconds = (time.perf_counter() - start) / sizes.sw_repeats
                windows = net.windows // sizes.sw_repeats
                mvox = math.prod(shape) / 1e6
                first = first or seconds / mvox
                part.rows[key] = {"status": "ok", "mvoxels": mvox, "windows": windows, "seconds": seconds,
                                  "ms_per_mvoxel": 1000.0 * seconds / mvox, "vs_smallest": seconds / mvox / first,
                                  "ms_per_window": 1000.0 * seconds / windows}
                del image
    for precision in ("fp32", "bf16"):
        rows = [r for key, r in part.rows.items() if key.startswith(precision) and r.get("status") == "ok"]
        for unit in ("mvoxel", "window"):
            costs = [r[f"ms_per_{unit}"] for r in rows]
            part.figures[f"{precision}_max_over_min_cost_per_{unit}"] = max(costs) / min(costs) if costs else None
    part.notes.append(f"window {roi}, overlap {cfg['sw_overlap']}, sw_batch_size {cfg['sw_batch_size']}, gaussian "
                      f"blending; the largest volume is the alarm CT's working volume at {cfg['spacing']} mm; mean of "
                      f"{sizes.sw_repeats} run(s) after one warm-up")


# ================================================================================================================
# streaming pixel metrics
# ================================================================================================================
def part_streaming_metrics(check: Check, part: Part) -> None:
    from synthcp3d.metrics import StreamingPixelFailureMetrics

    sizes, device = check.sizes, check.device
    metric = StreamingPixelFailureMetrics("pooled", device=device)
    chunks = chunk_sizes(sizes.pixels, sizes.chunk)
    tenth = max(1, len(chunks) // 10)
    if check.cuda:
        torch.cuda.reset_peak_memory_stats(device)
    part.first = "pixels fed"
    part.columns = [("update_s", "update s"), ("generate_s", "generate s"), ("peak_gpu_mib", "peak GPU MiB")]
    generate = update = 0.0
    done = 0
    for i, n in enumerate(chunks):
        start = time.perf_counter()
        score, error = make_chunk_on(str(device), 0, i, n)
        check.sync()
        middle = time.perf_counter()
        metric.update(score, error)
        check.sync()
        generate, update, done = generate + middle - start, update + time.perf_counter() - middle, done + n
        del score, error
        if i + 1 in (tenth, len(chunks)):
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if check.cuda else None
            part.rows[f"{done:,}"] = {"update_s": update, "generate_s": generate, "peak_gpu_mib": peak}
    start = time.perf_counter()
    result = metric.compute()
    check.sync()
    compute = time.perf_counter() - start
    part.figures = {"pixels": sizes.pixels, "seconds": update + compute, "compute_s": compute,
                    "metrics": {k: v for k, v in result.items() if isinstance(v, (int, float))}}
    part.notes += [
        f"{len(chunks)} chunks of <= {sizes.chunk:.3g} pixels drawn on {device} (bench_metrics.make_chunk_on); "
        f"compute() {compute:.3f} s; seconds = update + compute = {update + compute:.2f} s",
        "peak GPU memory is the allocator's peak since the start (the chunk being fed included)"
        if check.cuda else "peak GPU memory: CUDA only",
    ]


# ================================================================================================================
# two-process training
# ================================================================================================================
def distributed_worker(local_rank: int, overrides: dict[str, Any], root: str, iterations: int) -> None:
    """One rank: the segmenter trained for ``iterations`` on synthetic patches; writes ``rank<r>.pt``."""
    import ignite.distributed as idist
    from monai.data import Dataset
    from monai.utils import set_determinism

    from synthcp3d.engines.distributed import prepare_network, unwrap
    from synthcp3d.engines.sampling import make_train_loader
    from synthcp3d.engines.segmentation import SegmenterTrainer
    from synthcp3d.engines.training import run_training
    from synthcp3d.workflows.protocol import SegmenterRecipe

    device = idist.device()
    if device.type == "cpu":
        torch.set_num_threads(1)
    rank, world = idist.get_rank(), idist.get_world_size()
    set_determinism(seed=rank)  # different seeds per rank: DDP must broadcast rank 0's initial weights
    cfg = pancreas_config(Path(root) / "config", overrides, "train_segmenter")
    net = prepare_network(cfg.get_parsed_content("segmenter")())
    recipe = SegmenterRecipe(**cfg["segmenter_recipe"])
    batch = synthetic_batch(cfg["patch_size"], 4 * world, cfg["num_classes"], torch.device("cpu"))
    items = [{"image": batch["image"][i], "label": batch["label"][i]} for i in range(4 * world)]
    loader = make_train_loader(Dataset(items), batch_size=2 * world, seed=0)  # 2 per rank
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    trainer = SegmenterTrainer(device, loader, net, optimizer, loss_function=recipe.loss().to(device))
    start = time.perf_counter()
    run_training(trainer, iterations, Path(root) / "checkpoints", checkpoint_every=iterations, progress=False,
                 log_every=0)
    seconds = time.perf_counter() - start
    weights = {k: v.detach().cpu() for k, v in unwrap(net).state_dict().items()}
    info = {"device": str(device), "world_size": world, "backend": idist.backend(), "train_s": seconds,
            "batch_per_rank": loader.batch_size, "iterations": trainer.state.iteration}
    torch.save({"info": info, "weights": weights}, Path(root) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as sock:  # a free rendezvous port: another run may hold ignite's default
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _cuda_hidden_from_children(hide: bool) -> Iterator[None]:
    """Processes started in the block see no GPU (``CUDA_VISIBLE_DEVICES=""``); this one keeps its own."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hide:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if hide and before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        elif hide:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def part_distributed(check: Check, part: Part) -> None:
    from synthcp3d.engines.distributed import run_distributed

    nccl = check.cuda and torch.cuda.device_count() >= 2
    backend = "nccl" if nccl else "gloo"
    # With one GPU the two gloo ranks train on the CPU at the dry run's sizes: ignite's auto_model gives rank r the
    # device cuda:r, which one GPU lacks. Fork is quick; a process that has used CUDA must spawn fresh ones.
    start_method = "spawn" if torch.cuda.is_available() else "fork"
    sizes = check.sizes if nccl else DRY
    root = check.scratch / "distributed"
    root.mkdir()
    with _cuda_hidden_from_children(not nccl and torch.cuda.is_available()):
        run_distributed(
            distributed_worker, size_overrides(sizes, "train_segmenter"), str(root), sizes.dist_iterations,
            backend=backend, nproc_per_node=2, start_method=start_method, master_port=_free_port(),
        )
    results = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(2)]
    reference = results[0]["weights"]
    part.first = "rank"
    part.columns = [("device", "device"), ("backend", "backend"), ("world_size", "world size"),
                    ("batch_per_rank", "batch / rank"), ("iterations", "iterations"), ("train_s", "train s"),
                    ("max_abs_diff", "max abs diff to rank 0")]
    for rank, res in enumerate(results):
        diff = max(float((v.float() - reference[k].float()).abs().max()) for k, v in res["weights"].items())
        part.rows[str(rank)] = {**res["info"], "max_abs_diff": diff}
    identical = all(torch.equal(v, reference[k]) for k, v in results[1]["weights"].items())
    part.figures = {"identical_weights": identical, "backend": backend, "start_method": start_method}
    part.notes.append(f"segmenter step (`train_segmenter` settings, {sizes.name}), {sizes.dist_iterations} iterations "
                      f"via run_distributed + run_training, {backend}, {start_method}; identical weights across ranks: "
                      f"{'yes' if identical else 'NO'}")
    if not nccl:
        part.notes.append("gloo on the CPU at the dry run's sizes: NCCL needs two GPUs (ignite's auto_model puts "
                          "rank r on cuda:r)")
    if not identical:
        raise AssertionError("the two ranks ended with different weights")


# ================================================================================================================
# the demo study on the GPU (optional)
# ================================================================================================================
def part_study(check: Check, part: Part) -> None:
    if not check.study:
        raise Skipped("not requested (--study)")
    if not check.cuda:
        raise Skipped("needs CUDA (on the CPU the study is `make demo`)")
    work = Path(tempfile.mkdtemp(prefix="gpu_check_study_"))  # kept: only its report comes back from the machine
    command = [sys.executable, "-m", "synthcp3d.cli", "run", "pancreas", "--demo", "--profile", "study",
               "--out", str(work), "--device", "cuda"]
    part.notes.append("command: `synthcp " + " ".join(command[3:]) + "`")
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=check.study_timeout_s)
    part.first, part.columns = "stage", [("seconds", "seconds")]
    part.rows = {stage: {"seconds": float(s)} for stage, s in re.findall(r"\[(\w+)\] done in ([\d.]+) s", done.stdout)}
    part.figures = {"returncode": done.returncode, "output_tail": done.stdout.splitlines()[-40:]}
    report = work / "evaluate" / "report.md"
    if report.is_file():
        shutil.copyfile(report, check.out / STUDY_REPORT_NAME)
        part.notes.append(f"report: {STUDY_REPORT_NAME}")
    if done.returncode != 0:
        raise RuntimeError(f"the study exited with status {done.returncode}")


# in the order they run: the quick and certain first, the training steps (torch.compile's time is the unknown) last
PARTS: dict[str, Callable[[Check, Part], None]] = {
    "cuda_tests": part_cuda_tests,
    "alarm": part_alarm,
    "sliding_window": part_sliding_window,
    "streaming_metrics": part_streaming_metrics,
    "distributed": part_distributed,
    "train_steps": part_train_steps,
    "study": part_study,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {JSON_NAME} and {MARKDOWN_NAME}")
    parser.add_argument("--dry-run", action="store_true", help="every part at tiny sizes on the CPU")
    parser.add_argument("--parts", default=None, help=f"comma-separated subset of: {', '.join(PARTS)}")
    parser.add_argument("--study", action="store_true", help="also run the demo study on the GPU (not in 8 minutes)")
    parser.add_argument("--study-timeout", type=float, default=600.0, help="seconds the study may take")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; use --dry-run for the CPU check", file=sys.stderr)
        return 2
    parts = [p.strip() for p in args.parts.split(",") if p.strip()] if args.parts else None
    result = run_check(args.out, args.dry_run, parts, args.study, args.study_timeout)
    failed = [name for name, p in result["parts"].items() if p["status"] == "failed"]
    print(f"\n{args.out / MARKDOWN_NAME} ({result['total_seconds']:.0f} s)" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
