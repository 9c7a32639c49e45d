"""``synthcp run STUDY``: run every stage of a study bundle in order through MONAI's bundle runner.

Each stage is one bundle config merged onto ``configs/common.yaml`` and run with ``monai.bundle.run`` (in this
process, or with ``--subprocess`` as ``python -m monai.bundle run ...``, the exact command printed for each stage).
A stage writes ``<out>/<stage>/done.json`` atomically as its last act; stages whose marker exists are skipped, so an
interrupted run resumes where it stopped (``--force`` reruns the chosen stages). ``--demo`` first generates the
synthetic data set of the study into ``<out>/data`` (if absent) and uses the small settings of :data:`DEMO_SETTINGS`.

``--nproc N`` (N > 1) runs each training stage on N processes: ``torchrun --standalone --nproc_per_node=N -m
monai.bundle run`` with the bundle's ``configs/multi_gpu_train.yaml`` merged last (one process per GPU, NCCL; with
``--device cpu``, gloo on the CPU); the other stages run as without it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthcp3d.errors import SynthCPInputError

__all__ = ["Study", "STUDIES", "DEMO_SETTINGS", "DEMO_PROFILES", "add_arguments", "main", "run_study", "stage_command", "bundle_dir"]

logger = logging.getLogger(__name__)

DONE_MARKER = "done.json"


@dataclass(frozen=True)
class Study:
    """A study = a bundle folder and its stages in order (stage name = config file stem = output sub-folder)."""

    bundle: str
    stages: tuple[str, ...]
    report_stage: str
    training_stages: tuple[str, ...] = ()  # the stages that train networks (run on every process with --nproc N)
    demo_data: Mapping[str, Any] = field(default_factory=dict)
    # the demo data set: "module:function" writing it under OUT/data (called with ``demo_data``), the file whose
    # presence means it is there, and the folder (relative to OUT/data) given to the bundle as ``dataset_dir``
    demo_maker: str = "synthcp3d.data.phantom:make_pancreas_dataset"
    demo_ready: str = "Task07_Pancreas/dataset.json"
    demo_dataset: str = ""
    data_help: str = "the MSD Task07_Pancreas folder or its parent"


STUDIES: dict[str, Study] = {
    "pancreas": Study(
        bundle="pancreas_ct_synthcp",
        stages=(
            "prepare",
            "train_segmenter",
            "crossval",
            "train_synthesizer",
            "train_comparator",
            "train_vae_alarm",
            "evaluate",
            "inference",
        ),
        report_stage="evaluate",
        training_stages=("train_segmenter", "crossval", "train_synthesizer", "train_comparator", "train_vae_alarm"),
        # 80 real-size phantoms at a coarser native grid (96 x 96 x 40 voxels over a 224-256 x 224-256 x 110-130 mm
        # field of view: 2.3-2.7 mm in-plane, 2.8-3.2 mm slices), 26 of them in the test split
        demo_data={"cases": 80, "test_cases": 2, "seed": 0, "shape": (96, 96, 40)},
    ),
    "cityscapes": Study(
        bundle="cityscapes_failure_synthcp",
        stages=(
            "prepare",
            "train_segmenter",
            "crossval",
            "train_synthesizer",
            "train_comparator",
            "train_baselines",
            "evaluate",
        ),
        report_stage="evaluate",
        training_stages=("train_segmenter", "crossval", "train_synthesizer", "train_comparator", "train_baselines"),
        demo_data={"cases": 24, "val_cases": 8, "seed": 0, "size": (256, 128)},
        demo_maker="synthcp2d.data.synthetic_cityscapes:make_cityscapes_dataset",
        demo_ready="cityscapes/synthcp_synthetic.json",
        demo_dataset="cityscapes",
        data_help="the Cityscapes folder holding leftImg8bit/ and gtFine/",
    ),
    "streethazards": Study(
        bundle="streethazards_anomaly_synthcp",
        stages=("prepare", "train_segmenter", "train_synthesizer", "train_autoencoder", "evaluate"),
        report_stage="evaluate",
        training_stages=("train_segmenter", "train_synthesizer", "train_autoencoder"),
        demo_data={"cases": 24, "val_cases": 2, "test_cases": 10, "seed": 0, "size": (256, 128)},
        demo_maker="synthcp2d.data.synthetic_streethazards:make_streethazards_dataset",
        demo_ready="streethazards/synthcp_synthetic.json",
        demo_dataset="streethazards",
        data_help="the StreetHazards folder holding train/ and test/",
    ),
}

# Small settings of the CPU demo (bundle config overrides; per-stage ones under the stage's name). The same
# pipeline as the full-size run, only smaller: coarser voxels, smaller patches/ROI, a slim AH-Net, fewer
# iterations and folds. Measured on 2 CPU cores: see the bundle README.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "pancreas": {
        # 2.5 x 2.5 x 3 mm working grid; the segmenter is a full-resolution MONAI UNet (AH-Net at demo size learns the
        # tumour more slowly and costs 1.5x more per step: see the bundle README); 32^3 patches, half of them centred
        # on tumour voxels; the comparator sees |x - x̂|.
        "common": {
            "spacing": [2.5, 2.5, 3.0],
            "train_fraction": 0.675,  # 54 training / 26 test cases of 80
            "patch_size": [32, 32, 32],
            # whole-volume inference in 32^3 windows, the training patch (sw_roi_size null): the UNet's instance norm
            # takes its statistics over the window, and a 96x96x48 window shifted them (cross-validated tumour DSC
            # on 28 held-out cases per seed, seeds 0-2: 0.23 / 0.42 / 0.21 with 96x96x48, 0.36 / 0.43 / 0.42 with
            # 32^3, in 35 % less time)
            "sw_overlap": 0.0,
            "roi_size": [64, 48, 32],
            "vae_shape": [32, 32, 32],
            "num_folds": 2,
            "segmenter_name": "unet",
            "unet_features": [16, 16, 32, 64, 128, 16],
            "generator_channels": [32, 16, 8],
            "generator_spade_hidden": 16,
            "discriminator_num_d": 2,
            "discriminator_layers": 1,
            "discriminator_channels": 16,
            "settings_name": "demo",
            "comparator_channels": [16, 32, 64, 128],
            "mc_samples": 5,
        },
        "train_segmenter": {"iterations": 300, "batch_size": 2, "num_samples": 1, "lr": 1e-3},
        "crossval": {"iterations": 300, "batch_size": 2, "num_samples": 1, "lr": 1e-3},
        "train_synthesizer": {"iterations": 100, "lr_g": 1e-3, "lr_d": 2e-3},
        "train_comparator": {"iterations": 150, "lr": 1e-3},
        "train_vae_alarm": {"iterations": 150, "lr": 1e-3},
    },
    "cityscapes": {
        "common": {
            "image_size": [128, 64],
            "num_folds": 2,
            "settings_name": "demo",
            "segmenter_layers": [1, 1, 1, 1],
            "segmenter_channels": [16, 32, 64, 64],
            "fcn_width": 32,
            "generator_channels": [64, 32, 16],
            "generator_spade_hidden": 16,
            "discriminator_layers": 2,
            "discriminator_channels": 16,
            "comparator_channels": [16, 32, 64, 64],
            "confidnet_hidden": [32, 16],
            "vae_shape": [32, 64],
            "vae_channels": [8, 16, 32],
            "vae_latent": 16,
            "mc_samples": 5,
        },
        "train_segmenter": {"iterations": 100, "batch_size": 4},
        "crossval": {"iterations": 60, "batch_size": 4},
        "train_synthesizer": {"iterations": 100, "batch_size": 4},
        "train_comparator": {"iterations": 60, "batch_size": 4},
        "train_baselines": {"iterations": 60, "batch_size": 4},
    },
    "streethazards": {
        "common": {
            "image_size": [128, 64],
            "settings_name": "demo",
            "segmenter_layers": [1, 1, 1, 1],
            "segmenter_channels": [16, 32, 64, 64],
            "generator_channels": [64, 32, 16],
            "generator_spade_hidden": 16,
            "discriminator_layers": 2,
            "discriminator_channels": 16,
            "autoencoder_channels": [16, 32, 64],
            "autoencoder_strides": [2, 2, 2],
            "mc_samples": 5,
        },
        "train_segmenter": {"iterations": 200, "batch_size": 4},
        "train_synthesizer": {"iterations": 100, "batch_size": 4},
        "train_autoencoder": {"iterations": 100, "batch_size": 4},
    },
}


#: larger demo profiles (``--demo --profile NAME``): overrides merged over :data:`DEMO_SETTINGS`, same data
DEMO_PROFILES: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "pancreas": {
        # the study profile: long enough for the segmenter to find tumours (≈ 25 min on 2 CPU cores)
        "study": {
            "common": {"settings_name": "demo-study"},
            "train_segmenter": {"iterations": 1200},
            "crossval": {"iterations": 1200},
            "train_synthesizer": {"iterations": 300},
            "train_comparator": {"iterations": 400},
            "train_vae_alarm": {"iterations": 300},
        },
    },
}


def bundle_dir(study: Study) -> Path:
    """The bundle folder: ``bundles/<name>`` of the source tree (or ``$SYNTHCP_BUNDLES/<name>``)."""
    root = Path(os.environ.get("SYNTHCP_BUNDLES", Path(__file__).resolve().parents[1] / "bundles"))
    path = root / study.bundle
    if not (path / "configs" / "common.yaml").is_file():
        raise SynthCPInputError(f"bundle folder {path} not found (set SYNTHCP_BUNDLES to the folder holding {study.bundle})")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", choices=sorted(STUDIES), help="which study bundle to run")
    parser.add_argument("--out", required=True, type=Path, help="output folder (all stages write below it)")
    parser.add_argument(
        "--data", type=Path, default=None,
        help="data set folder: " + "; ".join(f"{n}: {s.data_help}" for n, s in sorted(STUDIES.items())),
    )
    parser.add_argument("--demo", action="store_true", help="generate a synthetic data set into OUT/data and use small settings")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--profile", default=None,
        help="with --demo: a larger demo profile (pancreas: 'study', about 25 min on 2 CPU cores, long enough for "
        "the segmenter to find tumours)",
    )
    parser.add_argument(
        "--seed", type=int, default=None,
        help="seed of the study (split, folds, initialisation) and, with --demo, of the generated data set",
    )
    parser.add_argument("--stages", default=None, help="comma-separated stages to run (default: all, in order)")
    parser.add_argument("--force", action="store_true", help="rerun the chosen stages even if they are complete")
    parser.add_argument("--subprocess", action="store_true", help="run each stage as `python -m monai.bundle run`")
    parser.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="processes per training stage (default 1): N > 1 runs each under `torchrun --standalone "
        "--nproc_per_node=N` with the bundle's configs/multi_gpu_train.yaml, one per GPU (--device cpu: gloo on the "
        "CPU); batch_size stays the global batch, split over the processes",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="extra bundle override, e.g. --set num_folds=4 --set train_comparator.iterations=500 (VALUE is YAML)",
    )


def _parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item:
            raise SynthCPInputError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        stage, _, name = key.rpartition(".")
        out.setdefault(stage or "common", {})[name] = yaml.safe_load(value)
    return out


def stage_overrides(
    study_name: str, stage: str, base: Mapping[str, Any], demo: bool, extra: Mapping[str, Mapping[str, Any]],
    profile: str | None = None,
) -> dict[str, Any]:
    """All overrides of one stage: base (paths, device) < demo common < demo stage < profile common < profile stage
    < --set common < --set stage."""
    settings = DEMO_SETTINGS.get(study_name, {}) if demo else {}
    chosen = DEMO_PROFILES.get(study_name, {}).get(profile, {}) if (demo and profile) else {}
    merged: dict[str, Any] = dict(base)
    for source in (settings.get("common", {}), settings.get(stage, {}), chosen.get("common", {}), chosen.get(stage, {}),
                   extra.get("common", {}), extra.get(stage, {})):
        merged.update(source)
    return merged


def stage_command(bundle: Path, stage: str, overrides: Mapping[str, Any], nproc: int = 1) -> list[str]:
    """The ``python -m monai.bundle run`` command line of one stage; with ``nproc`` > 1 under ``torchrun``
    (``python -m torch.distributed.run``) with ``configs/multi_gpu_train.yaml`` merged last."""
    configs = [str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / f"{stage}.yaml")]
    launcher = [sys.executable]
    if nproc > 1:
        configs.append(str(bundle / "configs" / "multi_gpu_train.yaml"))
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
           "--meta_file", str(bundle / "configs" / "metadata.json"),
           "--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in overrides.items():
        # Python literals: MONAI's command line (fire) reads JSON's false / null as the strings "false" / "null"
        cmd += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return cmd


def _run_stage(
    bundle: Path, stage: str, overrides: Mapping[str, Any], use_subprocess: bool, nproc: int = 1
) -> None:
    cmd = stage_command(bundle, stage, overrides, nproc)
    print(f"[{stage}] " + " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
    if use_subprocess or nproc > 1:
        env = None
        if nproc > 1 and not str(overrides.get("device", "")).startswith("cuda"):
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU: ignite puts rank r on cuda:r otherwise
        result = subprocess.run(cmd, check=False, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"stage {stage} failed (exit status {result.returncode})")
        return
    import warnings

    from monai.bundle import run

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*config_file.*")  # our own configs: the eval() warning is moot
        try:
            run(
                config_file=[str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / f"{stage}.yaml")],
                meta_file=str(bundle / "configs" / "metadata.json"),
                logging_file=str(bundle / "configs" / "logging.conf"),
                **dict(overrides),
            )
        except RuntimeError as err:  # MONAI wraps a stage's exception in "Failed to evaluate": surface a bad input
            cause = err.__cause__
            while cause is not None and not isinstance(cause, SynthCPInputError):
                cause = cause.__cause__
            if cause is not None:
                raise cause from None
            raise


def _resolve_device(device: str) -> str:
    if device != "auto":
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SynthCPInputError(f"--device {device} asked for CUDA but no CUDA device is available")
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_nproc(nproc: int, device: str) -> None:
    """``nproc`` processes on ``device`` (resolved): one GPU each under NCCL, or any number on the CPU (gloo)."""
    if not isinstance(nproc, int) or nproc < 1:
        raise SynthCPInputError(f"--nproc must be a whole number >= 1, got {nproc!r}")
    if nproc == 1 or not device.startswith("cuda"):
        return
    import torch

    if device != "cuda":
        raise SynthCPInputError(f"--nproc {nproc} uses GPUs 0..{nproc - 1}: give --device cuda (choose the GPUs with "
                                f"CUDA_VISIBLE_DEVICES), not {device}")
    if torch.cuda.device_count() < nproc:
        raise SynthCPInputError(f"--nproc {nproc} needs {nproc} GPUs (one per process); {torch.cuda.device_count()} "
                                "visible (--device cpu trains on the CPU with gloo)")


def _prepare_demo_data(study: Study, out: Path, seed: int | None = None) -> Path:
    import importlib

    data = out / "data"
    if (data / study.demo_ready).is_file():
        print(f"demo data: using {data / study.demo_dataset}", flush=True)
        return data / study.demo_dataset
    module, _, name = study.demo_maker.partition(":")
    settings = {**dict(study.demo_data), **({} if seed is None else {"seed": int(seed)})}
    print(f"demo data: generating {settings.get('cases')} synthetic training cases (seed {settings.get('seed')}) "
          f"into {data}", flush=True)
    getattr(importlib.import_module(module), name)(data, **settings)
    return data / study.demo_dataset


def run_study(
    study_name: str,
    out: str | Path,
    data: str | Path | None = None,
    demo: bool = False,
    device: str = "auto",
    stages: Sequence[str] | None = None,
    force: bool = False,
    use_subprocess: bool = False,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int | None = None,
    profile: str | None = None,
    nproc: int = 1,
) -> dict[str, float]:
    """Run (or resume) the stages of a study; return the wall time in seconds of each stage that ran.

    ``nproc`` > 1 runs each training stage (`Study.training_stages`) on that many processes under ``torchrun``.

    Raises:
        SynthCPInputError: unknown stage, no data folder, CUDA asked for but absent, unknown demo profile, ``nproc``
            below 1 or above the GPU count.
    """
    if profile is not None:
        known = sorted(DEMO_PROFILES.get(study_name, {}))
        if not demo or profile not in known:
            raise SynthCPInputError(
                f"--profile {profile!r} needs --demo and one of the {study_name} demo profiles: {known or 'none'}"
            )
    device = _resolve_device(device)
    _check_nproc(nproc, device)
    study = STUDIES[study_name]
    bundle = bundle_dir(study)
    out = Path(out).resolve()
    chosen = list(study.stages if stages is None else stages)
    unknown = [s for s in chosen if s not in study.stages]
    if unknown:
        raise SynthCPInputError(f"unknown stage(s) {unknown}; stages of {study_name}: {', '.join(study.stages)}")
    if data is None:
        if not demo:
            raise SynthCPInputError(f"give --data DIR ({study.data_help}) or use --demo")
        data = _prepare_demo_data(study, out, seed)
    data = Path(data).resolve()
    if not data.exists():
        raise SynthCPInputError(f"data folder {data} does not exist")
    base = {"dataset_dir": str(data), "output_dir": str(out), "device": device, "bundle_root": str(bundle)}
    if seed is not None:
        base["seed"] = int(seed)
    extra = extra or {}
    timings: dict[str, float] = {}
    for stage in study.stages:
        if stage not in chosen:
            continue
        marker = out / stage / DONE_MARKER
        if marker.is_file() and not force:
            print(f"[{stage}] complete ({marker}), skipped", flush=True)
            continue
        overrides = stage_overrides(study_name, stage, base, demo, extra, profile)
        if force:
            overrides["force"] = True
        start = time.perf_counter()
        _run_stage(bundle, stage, overrides, use_subprocess, nproc if stage in study.training_stages else 1)
        timings[stage] = time.perf_counter() - start
        if not marker.is_file():
            raise RuntimeError(f"stage {stage} ended without writing its completion marker {marker}")
        print(f"[{stage}] done in {timings[stage]:.1f} s", flush=True)
    return timings


def main(args: argparse.Namespace) -> int:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    start = time.perf_counter()
    timings = run_study(
        args.study, args.out, data=args.data, demo=args.demo, device=args.device, stages=stages, force=args.force,
        use_subprocess=args.subprocess, extra=_parse_overrides(args.set), seed=args.seed, profile=args.profile,
        nproc=args.nproc,
    )
    study = STUDIES[args.study]
    report = Path(args.out).resolve() / study.report_stage / "report.md"
    if report.is_file() and study.report_stage not in timings:  # a stage that ran printed its own report
        print()
        print(report.read_text())
        print(f"report: {report} (also .csv, .json; per-case predictions and scatter plots beside it)")
    total = time.perf_counter() - start
    ran = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    print(f"total {total:.0f} s" + (f" ({ran})" if ran else ""))
    return 0
