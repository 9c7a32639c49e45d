"""``synthcp export``: a trained pancreas run folder -> a self-contained MONAI inference bundle.

Layout written (model-zoo shaped)::

    DIR/LICENSE
    DIR/configs/inference.yaml   the workflow: run settings, network definition, preprocessing, inferer,
                                 postprocessing, evaluator (python -m monai.bundle run --config_file ...)
    DIR/configs/metadata.json    checked offline (synthcp3d.export.metadata.verify_bundle_metadata)
    DIR/configs/logging.conf
    DIR/docs/README.md
    DIR/models/                  segmenter.pt, generator.pt, comparator_synthcp.pt, mask_vae.pt,
                                 segmenter_fold_<i>.pt (the run's cross-validation folds, when it has them),
                                 networks.json, settings.json, vae_alarm_regressor.json, alarm_calibration.json (if any)

Everything is written into a hidden temporary sibling of ``DIR``, checked (metadata against the schema, the config's
network built, every network loaded by the DSC alarm from the new folder alone) and only then renamed onto ``DIR``:
a refused or failed export leaves nothing behind.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigParser

from synthcp3d import __version__
from synthcp3d.alarm import DSCAlarm
from synthcp3d.alarm.calibration import CALIBRATION_FILE
from synthcp3d.engines.checkpoint import load_weights
from synthcp3d.errors import SynthCPInputError
from synthcp3d.export.docs import bundle_readme
from synthcp3d.export.metadata import bundle_metadata, eval_metrics, verify_bundle_metadata
from synthcp3d.study_registry import study_bundle
from synthcp3d.utils.atomic import atomic_save_json, atomic_save_text
from synthcp3d.workflows import pancreas_model as wf
from synthcp3d.workflows.trained import load_network_spec

__all__ = ["export_bundle", "EXPORTED_NETWORKS", "TEMPLATE_PATH"]

TEMPLATE_PATH = Path(__file__).resolve().with_name("inference.yaml")
#: the networks the DSC alarm (and so the exported bundle) uses, by name in ``networks.json``
EXPORTED_NETWORKS = ("segmenter", "generator", "comparator_synthcp", "mask_vae")
_REGRESSOR = wf.REGRESSORS["vae_alarm"][0]
_CALIBRATION = Path(CALIBRATION_FILE).name  # the alarm's calibrated threshold, when the run has one


def _required_files() -> list[str]:
    return ["settings.json", "networks.json", *(wf.NETWORKS[n][0] for n in EXPORTED_NETWORKS), _REGRESSOR]


def _check_run(run: Path) -> None:
    if not run.is_dir():
        raise SynthCPInputError(f"run folder {run} does not exist")
    missing = [f"models/{name}" for name in _required_files() if not (run / "models" / name).is_file()]
    if missing:
        raise SynthCPInputError(
            f"{run} is not a finished pancreas run: missing {', '.join(missing)} (train it with "
            f"'synthcp run pancreas --out {run}')"
        )
    for name in EXPORTED_NETWORKS:  # readable, with an entry for each network (else one line naming the stage)
        load_network_spec(run / "models", name, wf.NETWORKS[name][2])


def _check_out(out: Path, run: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SynthCPInputError(f"output {out} exists and is not a folder")
    target, source = out.resolve(), run.resolve()
    if target == source or target in source.parents:
        raise SynthCPInputError(f"output folder {out} holds the run {run}: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SynthCPInputError(f"output folder {out} exists and is not empty: choose another --out, or give --force")


def _inference_config(study: wf.PancreasStudy, segmenter_spec: dict[str, Any], run: Path) -> str:
    settings = {
        "spacing": [float(v) for v in study.spacing],
        "hu_range": [float(v) for v in study.hu_range],
        "sw_roi_size": [int(v) for v in study.sw_roi_size],
        "sw_batch_size": int(study.sw_batch_size),
        "sw_overlap": float(study.sw_overlap),
        "class_names": list(study.class_names),
    }
    block = (
        "# ---- the run's settings (its models/settings.json) and its segmenter (its models/networks.json)\n"
        + yaml.safe_dump(settings, sort_keys=False, default_flow_style=None)
        + yaml.safe_dump({"network_def": segmenter_spec}, sort_keys=False, default_flow_style=None)
    )
    text = TEMPLATE_PATH.read_text()
    for key, value in (("@@RUN_SETTINGS@@\n", block), ("@@SYNTHCP_VERSION@@", __version__), ("@@RUN@@", run.name),
                       ("@@DATE@@", datetime.date.today().isoformat())):
        text = text.replace(key, value)
    return text


def _write_models(run: Path, models: Path, folds: list[Path]) -> list[str]:
    models.mkdir(parents=True)
    source = run / "models"
    for name in ["settings.json", *(wf.NETWORKS[n][0] for n in EXPORTED_NETWORKS), _REGRESSOR, _CALIBRATION]:
        if (source / name).is_file():
            shutil.copy2(source / name, models / name)
    specs = {n: load_network_spec(source, n, wf.NETWORKS[n][2]) for n in EXPORTED_NETWORKS}
    atomic_save_json(specs, models / "networks.json")
    for i, path in enumerate(folds):
        shutil.copy2(path, models / f"{wf.FOLD_SEGMENTER_PREFIX}{i}.pt")
    return sorted(p.name for p in models.iterdir())


def _study_bundle() -> tuple[Path, dict[str, Any]]:
    folder = study_bundle("pancreas")
    return folder, json.loads((folder / "configs" / "metadata.json").read_text())


def _write_bundle(run: Path, tmp: Path) -> dict[str, Any]:
    study = wf.load_study(run)
    folds = wf.fold_segmenter_paths(study)
    methods = ["synthcp", "vae_alarm", "ensemble"] + (["pairwise_dice", "synthcp_pairwise"] if folds else [])
    study_bundle, base_meta = _study_bundle()
    models = _write_models(run, tmp / "models", folds)
    (tmp / "configs").mkdir()
    spec = load_network_spec(run / "models", "segmenter", "train_segmenter")
    atomic_save_text(_inference_config(study, spec, run), tmp / "configs" / "inference.yaml")
    shutil.copy2(study_bundle / "configs" / "logging.conf", tmp / "configs" / "logging.conf")
    shutil.copy2(study_bundle / "LICENSE", tmp / "LICENSE")
    report_path = run / "evaluate" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    provenance = {
        "run": str(run.resolve()), "exported": datetime.datetime.now().isoformat(timespec="seconds"),
        "synthcp_version": __version__, "settings_name": study.settings_name,
        "segmenter": wf.segmenter_name(study), "fold_segmenters": len(folds), "methods": methods,
    }
    meta = bundle_metadata(base_meta, study, provenance["segmenter"], methods, eval_metrics(report, methods),
                           provenance)
    atomic_save_json(meta, tmp / "configs" / "metadata.json")
    settings = json.loads((run / "models" / "settings.json").read_text())
    test_cases = _test_cases(run) if report is not None else None
    (tmp / "docs").mkdir()
    atomic_save_text(bundle_readme(meta, settings, methods, models, test_cases), tmp / "docs" / "README.md")
    return meta


def _test_cases(run: Path) -> int | None:
    cases = run / "prepare" / "cases.json"
    try:
        return len(json.loads(cases.read_text())["test"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_bundle(folder: Path) -> None:
    """The new bundle stands alone: metadata valid, the config's network built and loaded, the alarm loads."""
    DSCAlarm.from_bundle(folder, device="cpu", progress=False)  # one clear line for weights that do not load
    verify_bundle_metadata(folder / "configs" / "metadata.json")
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(folder)
    load_weights({"segmenter": parser.get_parsed_content("network_def")}, folder / "models" / "segmenter.pt")


def _replace(src: Path, dst: Path) -> None:
    if dst.exists():  # --force: a folder cannot be renamed onto a non-empty one; move the old one aside first
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def export_bundle(run_dir: str | os.PathLike, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Export the trained pancreas run ``run_dir`` as a self-contained MONAI inference bundle in ``out_dir``.

    Args:
        run_dir: a finished run folder (``synthcp run pancreas --out RUN_DIR``): ``models/`` with the settings, the
            network specs and weights, and the VAE alarm's regressor.
        out_dir: the new bundle folder; refused when it exists and is not empty, unless ``force`` (then replaced).
        force: replace a non-empty ``out_dir``.

    Returns:
        ``out_dir``. Run it with ``python -m monai.bundle run --config_file OUT_DIR/configs/inference.yaml
        --dataset_dir INPUT_DIR --output_dir OUT``.

    Raises:
        SynthCPInputError: not a finished pancreas run (names the missing files), or ``out_dir`` refused.
    """
    run, out = Path(run_dir).expanduser(), Path(out_dir).expanduser()
    _check_run(run)
    _check_out(out, run, force)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_bundle(run, tmp)
        _check_bundle(tmp)
        os.chmod(tmp, 0o755)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # the parents this call made, innermost first, if still empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return out
