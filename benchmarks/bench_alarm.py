"""Seconds and peak memory of the DSC alarm per CT volume, stage by stage.

An *untrained* bundle with the full-size (paper) networks and settings of ``bundles/pancreas_ct_synthcp``
(AH-Net [3, 4, 6, 3], 1 mm voxels, 128x128x64 sliding windows, 96x96x64 pancreas ROI, 3D SPADE, ResNet-18
comparator, 64^3 mask VAE) is written to a temporary folder; speed and memory do not depend on the weights. A
synthetic abdomen-like CT (``--shape``, default 512x512x100 at 0.78x0.78x2.5 mm, int16 HU, LPS affine) is saved as
NIfTI and run through ``DSCAlarm.run_batch`` with per-stage timing: load, preprocess (orientation + 1 mm
resampling + HU window), segment, synthesize, compare, VAE, postprocess (resample back to the input grid), write.

Peak memory per stage: the process's peak resident set (Linux ``VmHWM``, reset before each stage), and on CUDA the
peak allocated GPU memory.

Usage::

    python benchmarks/bench_alarm.py                           # 512x512x100 on CPU, full-size networks
    python benchmarks/bench_alarm.py --device cuda
    python benchmarks/bench_alarm.py --shape 256 256 60 --settings demo   # quicker look
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthcp3d.alarm.api import DSCAlarm
from synthcp3d.alarm.predictor import STAGES
from synthcp3d.alarm.timing import StageTimer
from synthcp3d.data.volume_io import save_like
from synthcp3d.study_cli import STUDIES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import make_untrained_bundle  # noqa: E402 - the tests' untrained bundle (speed does not need training)

# ``--settings demo``: the small settings of the CPU demo (``synthcp run pancreas --demo``), exactly as it trains.
DEMO = STUDIES["pancreas"].demo_settings["common"]


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Air around an elliptic soft-tissue body with a spine and a hypodense pancreas-like blob, in HU ``(X, Y, Z)``."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    slab = np.where(body, 40.0, -1000.0).astype(np.float32)
    slab[((x - 0.0) / 0.08) ** 2 + ((y - 0.45) / 0.08) ** 2 < 1] = 700.0  # spine
    slab[((x + 0.1) / 0.25) ** 2 + ((y - 0.05) / 0.08) ** 2 < 1] = 90.0  # pancreas-like
    vol = np.repeat(slab[:, :, None], shape[2], axis=2)
    vol += rng.normal(0.0, 15.0, vol.shape).astype(np.float32)
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)


def prepare_case(
    folder: Path, overrides: Mapping[str, Any], shape: tuple[int, int, int], voxel: tuple[float, float, float]
) -> tuple[Path, Path]:
    """An untrained bundle (the full-size settings, with ``overrides``) and a synthetic CT NIfTI of ``shape``
    ``(X, Y, Z)`` voxels of ``voxel`` mm, both written below ``folder``; returns ``(bundle, ct)``."""
    bundle = make_untrained_bundle(folder / "bundle", overrides)
    affine = np.diag([-voxel[0], -voxel[1], voxel[2], 1.0])  # LPS, like most DICOM-derived CT
    return bundle, save_like(synthetic_ct(tuple(shape)), affine, folder / "ct.nii.gz")


def run_alarm(bundle: Path, source: Path, out_dir: Path, device: str, repeats: int = 1) -> StageTimer:
    """Run the alarm ``repeats`` times on ``source`` (the first warms up) and return the last case's stage timer."""
    alarm = DSCAlarm.from_bundle(bundle, device=device, progress=False, measure_memory=True)
    segmenter = alarm.predictor.segmenter
    if getattr(segmenter, "input_multiple", (0,))[-1] > 32:
        # AH-Net needs the last size to be a multiple of 32 only (it runs on the bundle's 128x128x64 windows);
        # synthcp3d.networks.segmenters asks for 2**(psp+3) there too, which refuses the full-size windows.
        segmenter.input_multiple = (*segmenter.input_multiple[:-1], 32)
    for report in alarm.run_batch([source] * max(1, repeats), out_dir=out_dir):
        if not report.ok:
            raise RuntimeError(f"the alarm failed: {report.error}")
    return report.timer


def total_seconds(timer: StageTimer) -> float:
    """The alarm's end-to-end seconds: the sum of its stages."""
    return sum(timer.seconds[s] for s in STAGES if s in timer.seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 100])
    parser.add_argument("--voxel", type=float, nargs=3, default=[0.78, 0.78, 2.5], help="input spacing (mm)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--settings", default="full", choices=("full", "demo"))
    parser.add_argument("--repeats", type=int, default=1, help="cases run; the table shows the last (1st warms up)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_alarm_") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        overrides = DEMO if args.settings == "demo" else {}
        bundle, source = prepare_case(tmp_path, overrides, tuple(args.shape), tuple(args.voxel))
        print(
            f"bundle ({args.settings} networks, untrained) and {tuple(args.shape)} volume ready in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        try:
            timer = run_alarm(bundle, source, tmp_path / "out", args.device, args.repeats)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    cuda = args.device == "cuda"
    header = f"{'stage':<12}{'seconds':>10}{'peak RSS MiB':>15}" + (f"{'peak GPU MiB':>15}" if cuda else "")
    lines = [header, "-" * len(header)]
    for stage in STAGES:
        if stage not in timer.seconds:
            continue
        row = f"{stage:<12}{timer.seconds[stage]:>10.2f}{timer.peak_rss_mb.get(stage, float('nan')):>15.0f}"
        if cuda:
            row += f"{timer.peak_gpu_mb.get(stage, float('nan')):>15.0f}"
        lines.append(row)
    total = total_seconds(timer)
    lines.append(
        f"{'total':<12}{total:>10.2f}{max(timer.peak_rss_mb.values(), default=float('nan')):>15.0f}"
        + (f"{max(timer.peak_gpu_mb.values(), default=float('nan')):>15.0f}" if cuda else "")
    )
    device = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"\nDSC alarm, one {args.shape[0]}x{args.shape[1]}x{args.shape[2]} volume ({args.voxel} mm), "
        f"{args.settings}-size networks, device {args.device} ({device}), torch {torch.__version__}"
    )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "shape": args.shape,
                    "device": device,
                    "settings": args.settings,
                    "seconds": timer.seconds,
                    "peak_rss_mb": timer.peak_rss_mb,
                    "peak_gpu_mb": timer.peak_gpu_mb,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
