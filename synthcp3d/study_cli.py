"""``synthcp run STUDY``: run every stage of a study bundle in order through MONAI's bundle runner.

Each stage is one bundle config merged onto ``configs/common.yaml`` and run with ``monai.bundle.run`` (in this
process, or with ``--subprocess`` as ``python -m monai.bundle run ...``, the exact command printed for each stage).
A stage writes ``<out>/<stage>/done.json`` atomically as its last act, recording the inputs it ran with (its settings
and the run ids of the stages it reads); a stage whose marker records its current inputs is skipped, so an interrupted
run resumes where it stopped, and a stale one reruns (``--force`` reruns the chosen stages). There is one staleness
rule, :func:`synthcp3d.workflows.common.stale_reason`: before skipping a stage whose marker exists, the runner resolves
the stage's config as ``monai.bundle run`` would (study and arguments, nothing run) and asks that rule, printing why a
stale stage reruns; the stage itself asks it again when it starts. ``--demo`` first generates the
synthetic data set of the study into ``<out>/data`` (if absent) and uses its small settings. What a study is (stages,
training stages, demo data and settings) lives in its bundle's ``configs/study.yaml`` (read by
:mod:`synthcp3d.study_registry`); the bundles folder is scanned for them (:data:`STUDIES`), so no study is registered
in Python.

``--nproc N`` (N > 1) runs each training stage on N processes: ``torchrun --standalone --nproc_per_node=N -m
monai.bundle run`` with the bundle's ``configs/multi_gpu_train.yaml`` merged last (one process per GPU, NCCL; with
``--device cpu``, gloo on the CPU); the other stages run as without it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from synthcp3d.errors import SynthCPInputError
from synthcp3d.study_registry import Study, bundle_dir, bundles_root, discover_studies, read_study

# torch, MONAI and synthcp3d.workflows are imported inside the functions that use them, so that `synthcp run --help`
# and argument errors answer in 0.1 s instead of 4.6 s (measured: all at the top, 2 CPU cores)

__all__ = [
    "Study", "STUDIES", "read_study", "discover_studies", "bundles_root", "bundle_dir", "add_arguments", "main",
    "run_study", "stage_command",
]

logger = logging.getLogger(__name__)

DONE_MARKER = "done.json"


#: the studies of the bundles folder (``synthcp run`` choices)
STUDIES: dict[str, Study] = discover_studies()


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
        help="with --demo: a larger demo profile of the bundle's configs/study.yaml ("
        + "; ".join(f"{n}: {', '.join(s.demo_profiles)}" for n, s in sorted(STUDIES.items()) if s.demo_profiles)
        + "; on 2 CPU cores the pancreas 'study' profile takes about 30-40 min, the cityscapes one about 75 min)",
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
        help="extra bundle override, e.g. --set num_folds=4 --set train_comparator.iterations=500 (STAGE.KEY: that "
        "stage only) --set segmenter_recipe#lr_decay=poly (MONAI's '#' for a key inside a config entry; VALUE is YAML)",
    )


def _parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
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
    study = STUDIES[study_name]
    settings = study.demo_settings if demo else {}
    chosen = study.demo_profiles.get(profile, {}) if (demo and profile) else {}
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


def _stale_reason(bundle: Path, stage: str, overrides: Mapping[str, Any]) -> str | None:
    """Why a stage whose marker exists must rerun (``None``: it is complete), by the stages' own rule: its config
    resolved as ``monai.bundle run`` resolves it (the study and the stage's arguments; nothing runs)."""
    from monai.bundle import ConfigParser

    from synthcp3d.workflows.common import configured_stale_reason

    parser = ConfigParser()
    parser.read_config(f=[str(bundle / "configs" / "common.yaml"), str(bundle / "configs" / f"{stage}.yaml")])
    parser.update(pairs=dict(overrides))
    return configured_stale_reason(parser.get_parsed_content("stage"))


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
    data = out / "data"
    spec = study.demo_data
    dataset = data / str(spec.get("dataset", ""))
    if (data / spec["ready"]).is_file():
        print(f"demo data: using {dataset}", flush=True)
        return dataset
    module, _, name = spec["maker"].partition(":")
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in (spec.get("settings") or {}).items()}
    settings.update({} if seed is None else {"seed": int(seed)})
    print(f"demo data: generating {settings.get('cases')} synthetic training cases (seed {settings.get('seed')}) "
          f"into {data}", flush=True)
    getattr(importlib.import_module(module), name)(data, **settings)
    return dataset


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
        known = sorted(STUDIES[study_name].demo_profiles)
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
    extra = extra or {}
    unknown = sorted(set(extra) - {"common", *study.stages})
    if unknown:  # "a.b=v" means stage a, key b: a nested config key would otherwise be dropped without a word
        raise SynthCPInputError(
            f"--set {unknown[0]}.<key>: {unknown[0]!r} is not a stage of {study_name} ({', '.join(study.stages)}); "
            f"a key inside a config entry is written with '#', e.g. --set segmenter_recipe#lr_decay=poly"
        )
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
    from synthcp3d.workflows.common import marker_run_id

    timings: dict[str, float] = {}
    for stage in study.stages:
        if stage not in chosen:
            continue
        marker = out / stage / DONE_MARKER
        overrides = stage_overrides(study_name, stage, base, demo, extra, profile)
        if marker.is_file() and not force:
            reason = _stale_reason(bundle, stage, overrides)
            if reason is None:
                print(f"[{stage}] complete ({marker}), skipped", flush=True)
                continue
            print(f"[{stage}] {reason}; rerunning", flush=True)
        if force:
            overrides["force"] = True
        previous = marker_run_id(marker)
        start = time.perf_counter()
        _run_stage(bundle, stage, overrides, use_subprocess, nproc if stage in study.training_stages else 1)
        timings[stage] = time.perf_counter() - start
        if marker_run_id(marker) in (None, previous):
            raise RuntimeError(f"stage {stage} ended without writing a new completion marker {marker}")
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
