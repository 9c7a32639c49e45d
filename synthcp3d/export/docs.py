"""``docs/README.md`` of an exported pancreas bundle: what it does, inputs and outputs, how to run it, where it
came from (the run, its settings, its test-split evaluation)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from synthcp3d.export.metadata import TABLE_ROWS

__all__ = ["bundle_readme"]


def _settings_table(settings: Mapping[str, Any]) -> list[str]:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | `{json.dumps(v)}` |" for k, v in settings.items()]
    return lines


def _metrics_table(metrics: Mapping[str, float], methods: Sequence[str]) -> list[str]:
    if not metrics:
        return ["The run has no `evaluate` stage report: no test-split figures."]
    lines = ["| class | method | MAE ↓ | P.C. ↑ | S.C. ↑ | AURC ↓ |", "|---|---|---:|---:|---:|---:|"]
    for cls in ("tumour", "pancreas"):
        for m in methods:
            values = [metrics.get(f"{cls}_dsc_prediction_{m}_{k}") for k in ("MAE", "PC", "SC", "AURC")]
            if any(v is not None for v in values):
                cells = " | ".join("n/a" if v is None else f"{v:.2f}" for v in values)
                lines.append(f"| {cls} | {TABLE_ROWS[m]} (`{m}`) | {cells} |")
    return lines


def bundle_readme(
    meta: Mapping[str, Any],
    settings: Mapping[str, Any],
    methods: Sequence[str],
    models: Sequence[str],
    test_cases: int | None,
) -> str:
    """The README text. ``meta``: the bundle's metadata (its ``synthcp_export`` provenance and ``eval_metrics``);
    ``settings``: the run's ``models/settings.json``; ``methods``: the alarm methods predicted; ``models``: the
    files of ``models/``; ``test_cases``: the run's test-split size (None: no evaluation)."""
    prov = meta["synthcp_export"]
    required = ", ".join(f"{k} {v}" for k, v in meta["required_packages_version"].items())
    columns = ", ".join(f"`tumour_dsc_{m}`" for m in methods)
    figures = f" ({test_cases} test cases of the run's split, x100)" if test_cases else ""
    lines = [
        f"# {meta['name']}",
        "",
        meta["description"],
        "",
        f"Exported by `synthcp export` (synthcp {prov['synthcp_version']}) on {prov['exported']} from the trained run "
        f"`{prov['run']}` (settings `{settings.get('settings_name')}`, segmenter {prov['segmenter']}, "
        f"{prov['fold_segmenters']} cross-validation fold segmenter(s)). The run folder is not needed to use it.",
        "",
        "## Run it",
        "",
        "```bash",
        f"pip install -e /path/to/synthcp      # synthcp {prov['synthcp_version']}: the networks and the DSC alarm",
        "python -m monai.bundle run --config_file BUNDLE/configs/inference.yaml \\",
        "    --dataset_dir INPUT_DIR --output_dir OUT [--device cpu]",
        "```",
        "",
        "It runs from any directory: `bundle_root` is found from the config file's location (`--bundle_root` "
        "replaces it). Nothing is downloaded. Required packages: " + required + ".",
        "",
        "## Input",
        "",
        "Every NIfTI file (`.nii`, `.nii.gz`) directly in `--dataset_dir`: abdominal CT in Hounsfield units, any "
        "orientation and spacing. The bundle reorients to RAS, resamples to "
        f"{settings.get('spacing')} mm (bilinear) and maps the HU window {settings.get('hu_range')} to [-1, 1], as "
        "the run's training did.",
        "",
        "## Outputs (in `--output_dir`)",
        "",
        "- `<case>_seg.nii.gz`: the segmentation (uint8: 0 background, 1 pancreas, 2 tumour) on the input's own "
        "grid (same shape and affine; the preprocessing inverted, nearest neighbour).",
        "- `predicted_dsc.csv`: one row per case with the DSC alarm's predicted tumour and pancreas DSC of that "
        f"segmentation ({columns} and the pancreas columns), `flagged` (the alarm's flag: the "
        "`ensemble` tumour DSC, or the calibrated method's, below `threshold`) and the alarm's other summary columns.",
        "- `predicted_dsc.json`: each case's alarm report (full precision, the models used, the flag rule).",
        "",
        "The predictions describe the written segmentation: the alarm judges the bundle segmenter's label map on the "
        "preprocessed grid before it is inverted. Pairwise-Dice columns are empty when the run had no fold "
        "segmenters.",
        "",
        "## How well the predicted DSC tracked the true DSC in the run" + figures,
        "",
        *_metrics_table(meta.get("eval_metrics", {}), methods),
        "",
        "## Settings of the run (`models/settings.json`)",
        "",
        *_settings_table(settings),
        "",
        "## Layout",
        "",
        "- `configs/inference.yaml`: the workflow (stock MONAI: `LoadImaged`, `Orientationd`, `Spacingd`, "
        "`ScaleIntensityRanged`, `SlidingWindowInferer`, `SupervisedEvaluator`, `CheckpointLoader`, `Invertd`, "
        "`SaveImaged`; synthcp: the network classes, `DSCAlarm.from_bundle`, `PredictDSCd`).",
        "- `configs/metadata.json`: checked by `monai.bundle.verify_metadata` against synthcp's offline schema of the "
        "fields the MONAI Bundle Specification documents (`synthcp3d/export/metadata_schema.json`), not against the "
        "downloaded model-zoo schema.",
        "- `models/`: " + ", ".join(f"`{m}`" for m in models) + " (`networks.json`: how each network is built).",
        "- `LICENSE`: Apache-2.0 (the synthcp project's license).",
        "",
        "Research use only; not for clinical decisions.",
        "",
    ]
    return "\n".join(lines)
