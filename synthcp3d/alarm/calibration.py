"""Choose the alarm's flag threshold on a held-out labelled set, with a finite-sample miss guarantee.

Method: class-conditional split-conformal (an order-statistic bound). Let ``s_1..s_n`` be the ensemble's predicted
tumour DSC on the ``n`` calibration cases that are *truly bad* (true tumour DSC of the bundle's own segmentation
``< target_dsc``), ``α = max_miss``, ``k = ⌈(n + 1)(1 − α)⌉`` and ``s_(k)`` the k-th smallest. The threshold is
the smallest value on a 1e-4 grid strictly above ``s_(k)``, and a case is flagged when its predicted DSC is ``< T``.

Guarantee: if the calibration cases and a new case are exchangeable (e.g. i.i.d. from the same population, same
scanner mix, same bundle), then for a new truly bad case ``P(not flagged) ≤ 1 − k/(n + 1) ≤ α``. The probability is
over the draw of the calibration set and the new case together (marginal, not conditional on this particular
calibration set); it says nothing about good cases (specificity is only estimated). It needs ``k ≤ n``, i.e.
``n ≥ ⌈1/α⌉ − 1`` bad cases; with fewer no threshold below "flag everything" carries the guarantee, and
calibration refuses. Cases whose true tumour DSC is undefined (no tumour in the label nor in the segmentation)
are neither bad nor good: excluded and counted.

Sensitivity (bad cases flagged), specificity (good cases not flagged) and flag rate (all cases flagged) are
reported on the calibration set with exact Clopper–Pearson intervals (``scipy.stats.binomtest(...).proportion_ci``).
They are in-sample figures for a threshold chosen on the same cases: the sensitivity estimate is optimistic; the
guarantee above is the statement to rely on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy.stats import binomtest
from tqdm.auto import tqdm

from synthcp3d.data.msd import load_msd_datalist
from synthcp3d.errors import SynthCPInputError
from synthcp3d.targets import per_class_quality
from synthcp3d.utils.atomic import atomic_save_json, atomic_save_text

__all__ = [
    "CALIBRATION_FILE",
    "calibration_path",
    "CalibrationResult",
    "Proportion",
    "choose_threshold",
    "read_calibration",
    "write_calibration",
    "calibrate_alarm",
    "load_labelled_cases",
]

#: Where the calibrated threshold lives, relative to the bundle folder.
CALIBRATION_FILE = "models/alarm_calibration.json"
METHOD = "class-conditional split-conformal (order statistic)"


@dataclass
class Proportion:
    """``successes / trials`` with an exact Clopper–Pearson interval (None when ``trials`` is 0)."""

    successes: int
    trials: int
    value: float | None
    ci_low: float | None
    ci_high: float | None

    @classmethod
    def of(cls, successes: int, trials: int, confidence: float) -> Proportion:
        if trials == 0:
            return cls(0, 0, None, None, None)
        ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="exact")
        return cls(int(successes), int(trials), successes / trials, float(ci.low), float(ci.high))

    def __str__(self) -> str:
        if self.value is None:
            return "n/a (no case)"
        return f"{self.value:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] ({self.successes}/{self.trials})"


@dataclass
class CalibrationResult:
    """The chosen threshold, its guarantee and its in-sample operating point."""

    threshold: float
    target_dsc: float
    max_miss: float
    confidence: float
    n_cases: int
    n_excluded: int
    n_bad: int
    n_good: int
    rank: int
    miss_bound: float
    sensitivity: Proportion
    specificity: Proportion
    flag_rate: Proportion
    method: str = METHOD
    guarantee: str = ""
    cases: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("cases")
        return data

    def summary(self) -> str:
        """Human-readable lines for the command line."""
        return "\n".join(
            [
                f"threshold T = {self.threshold:.4f} (flag when predicted tumour DSC < T)",
                f"method: {self.method}; {self.guarantee}",
                f"cases: {self.n_cases} ({self.n_bad} bad: true tumour DSC < {self.target_dsc}, {self.n_good} good, "
                f"{self.n_excluded} excluded: tumour absent from label and segmentation)",
                f"sensitivity  {self.sensitivity}",
                f"specificity  {self.specificity}",
                f"flag rate    {self.flag_rate}",
                f"(in-sample, exact Clopper-Pearson {self.confidence:.0%} intervals)",
            ]
        )


def choose_threshold(
    predicted: Sequence[float] | np.ndarray,
    true: Sequence[float] | np.ndarray,
    target_dsc: float = 0.5,
    max_miss: float = 0.1,
    confidence: float = 0.95,
) -> CalibrationResult:
    """Choose ``T`` so that at most ``max_miss`` of truly bad cases go unflagged (guarantee: module docstring).

    Args:
        predicted: predicted tumour DSC per case ``(N,)`` (NaN = no prediction: always flagged).
        true: true tumour DSC per case ``(N,)`` (NaN = undefined: excluded).
        target_dsc: a case is truly bad when its true DSC is below this.
        max_miss: α, the largest acceptable share of bad cases left unflagged, in (0, 1).
        confidence: level of the Clopper–Pearson intervals.

    Raises:
        SynthCPInputError: bad arguments, or too few bad cases for the guarantee.
    """
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    true = np.asarray(true, dtype=np.float64).reshape(-1)
    if predicted.shape != true.shape:
        raise SynthCPInputError(f"{predicted.size} predicted DSCs but {true.size} true DSCs")
    if not 0.0 < max_miss < 1.0:
        raise SynthCPInputError(f"--max-miss must lie strictly between 0 and 1, got {max_miss}")
    if not 0.0 < target_dsc <= 1.0:
        raise SynthCPInputError(f"--target-dsc must lie in (0, 1], got {target_dsc}")
    if not 0.0 < confidence < 1.0:
        raise SynthCPInputError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    defined = np.isfinite(true)
    bad = defined & (true < target_dsc)
    good = defined & ~bad
    n_bad = int(bad.sum())
    scores = np.where(np.isfinite(predicted), predicted, -np.inf)  # no prediction = flagged whatever T
    rank = math.ceil((n_bad + 1) * (1.0 - max_miss) - 1e-12)
    if n_bad == 0 or rank > n_bad:
        need = math.ceil((1.0 - max_miss) / max_miss - 1e-12)
        raise SynthCPInputError(
            f"only {n_bad} truly bad case(s) (true tumour DSC < {target_dsc}) in the calibration set: "
            f"--max-miss {max_miss} needs at least {need}; add held-out cases or raise --max-miss"
        )
    kth = float(np.sort(scores[bad])[rank - 1])
    # The smallest 1e-4 step strictly above s_(k): every bad score <= s_(k) is then flagged by "< T".
    threshold = -1.0 if not math.isfinite(kth) else (math.floor(kth * 1e4 + 1e-9) + 1) / 1e4
    flagged = scores < threshold
    bound = 1.0 - rank / (n_bad + 1)
    guarantee = (
        f"for a new truly bad case exchangeable with the {n_bad} calibration bad cases, "
        f"P(not flagged) <= 1 - {rank}/{n_bad + 1} = {bound:.4f} <= {max_miss}"
    )
    cases = [
        {"predicted_tumour_dsc": float(p), "true_tumour_dsc": float(t), "bad": bool(b), "flagged": bool(f)}
        for p, t, b, f in zip(predicted, true, bad, flagged)
    ]
    return CalibrationResult(
        threshold=threshold,
        target_dsc=float(target_dsc),
        max_miss=float(max_miss),
        confidence=float(confidence),
        n_cases=int(predicted.size),
        n_excluded=int((~defined).sum()),
        n_bad=n_bad,
        n_good=int(good.sum()),
        rank=rank,
        miss_bound=bound,
        sensitivity=Proportion.of(int((flagged & bad).sum()), n_bad, confidence),
        specificity=Proportion.of(int((~flagged & good).sum()), int(good.sum()), confidence),
        flag_rate=Proportion.of(int(flagged.sum()), int(predicted.size), confidence),
        guarantee=guarantee,
        cases=cases,
    )


def calibration_path(bundle: str | os.PathLike) -> Path:
    """``models/alarm_calibration.json`` of the trained bundle folder (``bundle`` or ``bundle/outputs``)."""
    bundle = Path(bundle)
    if not (bundle / "models").is_dir() and (bundle / "outputs" / "models").is_dir():
        bundle = bundle / "outputs"
    return bundle / CALIBRATION_FILE


def write_calibration(
    result: CalibrationResult, bundle: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
    """Store the threshold in the bundle's ``models/alarm_calibration.json`` (atomic), the per-case CSV beside it."""
    path = calibration_path(bundle)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_json({**result.to_dict(), **(extra or {})}, path)
    except OSError as err:
        raise SynthCPInputError(
            f"cannot write the calibration into the bundle at {path}: {err.strerror or err}"
        ) from None
    if result.cases:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(result.cases[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(result.cases)
        atomic_save_text(buffer.getvalue(), path.with_name("alarm_calibration_cases.csv"))
    return path


def read_calibration(bundle: str | os.PathLike) -> dict[str, Any] | None:
    """The bundle's stored calibration (with its ``path``), or None when it has none."""
    path = calibration_path(bundle)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        float(data["threshold"])
    except (ValueError, KeyError, TypeError) as err:
        raise SynthCPInputError(
            f"calibration file {path} is unreadable ({err}): re-run 'synthcp alarm calibrate'"
        ) from None
    data["path"] = str(path)
    return data


def load_labelled_cases(data: str | os.PathLike) -> list[dict[str, str]]:
    """Labelled cases ``[{"image", "label", "case"}]`` from an MSD Task07 folder or a CSV with image,label columns."""
    data = Path(data)
    if data.suffix.lower() == ".csv" and data.is_file():
        with open(data, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or "image" not in rows[0] or "label" not in rows[0]:
            raise SynthCPInputError(f"calibration CSV {data} needs the columns image,label (one row per case)")
        out = []
        for i, row in enumerate(rows):
            image, label = Path(row["image"]), Path(row["label"])
            image, label = (p if p.is_absolute() else data.parent / p for p in (image, label))
            out.append({"image": str(image), "label": str(label), "case": row.get("case") or f"case_{i:04d}"})
        return out
    items = load_msd_datalist(data, section="training")
    return [
        {"image": str(d["image"]), "label": str(d["label"]), "case": str(d.get("case", Path(d["image"]).name))}
        for d in items
    ]


def calibrate_alarm(
    alarm: Any,
    cases: Sequence[dict[str, str]],
    target_dsc: float = 0.5,
    max_miss: float = 0.1,
    confidence: float = 0.95,
    tumour_label: int = 2,
) -> CalibrationResult:
    """Run ``alarm`` (a :class:`~synthcp3d.alarm.api.DSCAlarm`) on labelled cases and choose the threshold.

    The true tumour DSC compares the alarm's own segmentation with the label on the input grid; a case whose image
    or label cannot be used is refused (calibration needs every case it was given, so that the set stays the
    held-out sample the user chose).
    """
    predicted, true = [], []
    for case in tqdm(cases, desc="calibrating", unit="case", disable=not getattr(alarm, "progress", True)):
        report = alarm(case["image"], case_id=case["case"])
        try:
            label = np.asarray(nib.load(case["label"]).dataobj)
        except Exception as err:  # nibabel raises many types for unreadable files
            raise SynthCPInputError(f"cannot read label {case['label']}: {err}") from None
        if label.shape != report.segmentation.shape:
            raise SynthCPInputError(
                f"label {case['label']} has shape {label.shape} but its image {case['image']} has "
                f"{report.segmentation.shape}"
            )
        num_classes = max(tumour_label + 1, int(label.max()) + 1)
        quality = per_class_quality(
            torch.from_numpy(report.segmentation.astype(np.int64))[None],
            torch.from_numpy(np.rint(label).astype(np.int64))[None],
            num_classes=num_classes,
            metric="dice",
        )
        true.append(float(quality[0, tumour_label]))
        value = report.predicted_dsc.get(alarm.flag_method, {}).get("tumour")
        predicted.append(float("nan") if value is None else float(value))
    result = choose_threshold(predicted, true, target_dsc, max_miss, confidence)
    for row, case in zip(result.cases, cases):
        row["case"] = case["case"]
    return result
