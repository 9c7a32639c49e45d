"""Report sections that put every learned part beside its simplest replacement (any study, 2D or 3D).

- :func:`segmenter_section`: the judged segmenter's true quality and its spread (a failure detector can only be
  judged on a segmenter that is mostly right and sometimes wrong);
- :func:`synthesis_section`: ``G(ground truth)`` against the real image, beside the class-mean painter, with the
  gap between them and its bootstrap interval (:func:`synthesis_gap`);
- :func:`pixel_section`: the pixel-level failure metrics of every error map, both reductions, named;
- :func:`synthesis_use_section`: how much SynthCP's predicted quality moves when ``x̂`` is replaced;
- :func:`feature_spread_section`: whether each comparator's encoder still tells cases apart (a collapsed encoder
  gives every case the same pooled features, so its quality head predicts a constant).

Each returns ``(markdown, data)``: a Markdown block with its own ``##`` heading and the JSON-able figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from synthcp3d.metrics import pixel_failure_metrics
from synthcp3d.report import markdown_table
from synthcp3d.scoring.synthesis import PAINTER_NAME
from synthcp3d.utils.atomic import atomic_path

__all__ = [
    "quality_spread", "segmenter_section", "synthesis_gap", "synthesis_section", "pixel_section",
    "synthesis_use_section", "feature_spread", "feature_spread_section", "comparison_figure",
]

FAILURE_BELOW = 0.3
#: the synthesis gap's interval, and its keys in a synthesizer's row (the bounds are not averaged over runs)
GAP_CONFIDENCE = 0.95
GAP_INTERVAL_KEYS = ("mean_error_gap_low/", "mean_error_gap_high/")
# relative spread below which an encoder counts as collapsed: measured 0.004-0.006 on collapsed comparators of the
# pancreas demo study, 0.38-0.48 on working ones (see `feature_spread`)
COLLAPSED_BELOW = 0.05
PIXEL_COLUMNS = (("AUPR_Error", "AUPR-Error ↑"), ("AUPR_Success", "AUPR-Success ↑"), ("AUROC", "AUROC ↑"),
                 ("FPR95", "FPR95 ↓"))


def quality_spread(values: Any, failure_below: float = FAILURE_BELOW) -> dict[str, float]:
    """Mean, SD (ddof 1) and share below ``failure_below`` of the finite values, with their count ``n``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0, "mean": float("nan"), "sd": float("nan"), "failures": float("nan")}
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"n": int(v.size), "mean": float(v.mean()), "sd": sd, "failures": float((v < failure_below).mean())}


def segmenter_section(
    segmenter: str, quality: Mapping[str, np.ndarray], class_names: Sequence[str], quality_name: str = "DSC",
    notes: Sequence[str] = (),
) -> tuple[str, dict]:
    """The judged segmenter's true quality per split (rows) and class: mean ± SD, share of failures.

    Args:
        segmenter: its name, as the report should show it.
        quality: split name -> true quality ``(N, C)`` (NaN = undefined).
        class_names: the ``C`` class names; column 0 (background) is skipped.
    """
    data: dict[str, dict] = {}
    rows = []
    for split, values in quality.items():
        values = np.asarray(values, dtype=np.float64)
        data[split] = {name: quality_spread(values[:, k]) for k, name in enumerate(class_names) if k}
        cells = [f"{s['mean']:.3f} ± {s['sd']:.3f} ({100 * s['failures']:.0f} %, n={s['n']})"
                 if s["n"] else "n/a" for s in data[split].values()]
        rows.append(f"| {split} | " + " | ".join(cells) + " |")
    header = "| split | " + " | ".join(class_names[1:]) + " |"
    lines = [
        f"## The segmenter being judged: {segmenter}",
        "",
        f"True {quality_name}: mean ± SD (share of cases below {FAILURE_BELOW}, number of cases with a defined value).",
        "",
        header,
        "|---|" + "---:|" * (len(class_names) - 1),
        *rows,
        *([""] + [f"- {n}" for n in notes] if notes else []),
    ]
    return "\n".join(lines), {"segmenter": segmenter, "splits": data}


def _nanmean(values: Any) -> float:
    """Mean of the finite values (NaN, without a warning, when there is none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def synthesis_gap(
    cases: Sequence[Mapping[str, float]],
    reference: Sequence[Mapping[str, float]],
    keys: Sequence[str],
    confidence: float = GAP_CONFIDENCE,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """How far one synthesizer is from another on per-class figures, with a paired bootstrap interval over cases.

    The figure is the one of the synthesis table: per key (e.g. ``mean_error/<class>``) the mean over the cases
    holding it (NaN: class absent), then the mean over the keys. The gap is that figure for ``cases`` minus that for
    ``reference``; the interval (percentile method) resamples the case indices, the same ones for both, so the
    image-to-image spread both share cancels. Written with numpy rather than ``scipy.stats.bootstrap``: a resample
    can miss a class no other case holds, and scipy then voids the whole interval; here that resample averages
    over the classes it holds (so the interval also carries which classes a resample holds), and a resample
    missing every key is left out and counted.

    Args:
        cases, reference: one quality dict per case each, the same cases in the same order.
        keys: the per-class figures averaged.

    Returns:
        ``{"gap", "low", "high", "n", "dropped"}``: the gap (NaN: no case holds any key), its ``confidence`` interval
        (NaN with fewer than 2 cases or an undefined gap), the number of cases and of resamples left out.
    """
    if len(cases) != len(reference):
        raise ValueError(f"the gap needs the same cases: {len(cases)} vs {len(reference)}")
    n = len(cases)
    a = np.array([[c[k] for k in keys] for c in cases], dtype=np.float64).reshape(n, len(keys))
    b = np.array([[c[k] for k in keys] for c in reference], dtype=np.float64).reshape(n, len(keys))

    def gaps(index: np.ndarray) -> np.ndarray:
        """``index (R, n)`` resampled case indices -> ``(R,)`` gaps (NaN where no resampled case holds a key)."""
        per_key = []
        for values in (a, b):
            taken = values[index]  # (R, n, K)
            finite = np.isfinite(taken)
            with np.errstate(invalid="ignore"):  # a key no resampled case holds is NaN: it counts for no mean
                per_key.append(np.where(finite, taken, 0.0).sum(1) / finite.sum(1))
        diff = per_key[0] - per_key[1]
        held = np.isfinite(diff)
        with np.errstate(invalid="ignore"):
            return np.where(held, diff, 0.0).sum(1) / held.sum(1)

    gap = float(gaps(np.arange(n)[None])[0]) if n else float("nan")
    low = high = float("nan")
    dropped = 0
    if n >= 2 and np.isfinite(gap):
        resampled = gaps(np.random.default_rng(seed).integers(0, n, size=(n_resamples, n)))
        kept = resampled[np.isfinite(resampled)]
        dropped = int(resampled.size - kept.size)
        if kept.size:  # none kept (every resample missed every key): no interval
            tail = (1.0 - confidence) / 2.0
            low, high = (float(q) for q in np.quantile(kept, [tail, 1.0 - tail]))
    return {"gap": gap, "low": low, "high": high, "n": n, "dropped": dropped}


def _signed(value: float) -> str:
    text = f"{value:+.2f}"
    return "+0.00" if text == "-0.00" else text  # no negative zero for a gap that rounds to nothing


def _gap_sentence(name: str, reference: str, target: str, unit: str, gap: Mapping[str, float]) -> str:
    head = f"- {name} − {reference}, {target}:"
    if not np.isfinite(gap["gap"]):
        return f"{head} undefined (no case holds the class)"
    if not np.isfinite(gap["low"]):
        return f"{head} {_signed(gap['gap'])} {unit} (no interval: fewer than 2 cases)"
    verdict = (f"better than the {reference}" if gap["high"] < 0 else f"worse than the {reference}"
               if gap["low"] > 0 else f"level with the {reference} (the interval holds 0)")
    left_out = f"; {gap['dropped']} resamples holding none of the classes left out" if gap["dropped"] else ""
    return (f"{head} **{_signed(gap['gap'])}** {unit} ({100 * GAP_CONFIDENCE:g} % interval {_signed(gap['low'])} "
            f"to {_signed(gap['high'])}{left_out}): {name} is {verdict}")


def synthesis_section(
    per_case: Mapping[str, Sequence[Mapping[str, float]]],
    class_names: Sequence[str],
    unit: str,
    shown: Sequence[str] | None = None,
    where: str = "the test cases' ground-truth crops",
    element: str = "voxel",
    average: bool = False,
    reference: str = PAINTER_NAME,
) -> tuple[str, dict]:
    """Synthesis quality per synthesizer (rows), averaged over cases: per-class mean error and MAE, SSIM; and each
    synthesizer's gap to ``reference`` on the mean error (`synthesis_gap`: keys ``mean_error_gap/<target>``, with
    ``_low`` / ``_high`` for its interval; the target is the mean over classes with ``average``, else each class).

    Args:
        per_case: synthesizer name -> one :func:`synthcp3d.scoring.synthesis.synthesis_quality` dict per case.
        class_names: the classes measured (the dicts' keys).
        unit: physical unit of the errors (e.g. "HU").
        shown: the classes given a column (default: all of ``class_names``; every class stays in the data).
        where: what the images are, for the text.
        element: "voxel" (3D) or "pixel" (2D), for the text.
        average: add the mean over ``class_names`` of the per-class figures (key ``"<measure>/mean over classes"``).
    """
    shown = list(class_names if shown is None else shown)
    measures = ("mean_error", "mae")
    keys = [f"{m}/{c}" for m in measures for c in class_names] + ["ssim"]
    rows: dict[str, dict[str, float]] = {}
    for name, cases in per_case.items():
        rows[name] = {k: _nanmean([c[k] for c in cases]) for k in keys}
        if average:
            for m in measures:
                rows[name][f"{m}/mean over classes"] = _nanmean([rows[name][f"{m}/{c}"] for c in class_names])
    columns = [(f"mean_error/{c}", f"{c}: mean {unit} error ↓") for c in shown]
    columns += [(f"mae/{c}", f"{c}: MAE {unit} ↓") for c in shown]
    if average:
        columns = [("mean_error/mean over classes", f"mean over {len(class_names)} classes: mean {unit} error ↓"),
                   ("mae/mean over classes", f"mean over {len(class_names)} classes: MAE {unit} ↓"), *columns]
    columns += [("ssim", "SSIM ↑")]
    n = max((len(c) for c in per_case.values()), default=0)
    whole = "crop" if element == "voxel" else "image"
    lines = [
        "## Synthesis quality: G(ground truth) vs the real image",
        "",
        f"On {where} (n={n}): per class, the error of the class's mean intensity "
        f"|mean(x̂) − mean(x)| (averaged over the image channels) and the {element}-wise mean absolute error, in "
        f"{unit}; SSIM of the whole {whole}. The class-mean painter paints each label with its training mean plus "
        "noise of its training SD: G must at least match it on the mean error.",
        "",
        markdown_table(rows, columns, first="synthesizer"),
    ]
    gaps = []
    targets = {"mean over classes": class_names} if average else {c: [c] for c in class_names}
    compared = [n for n in per_case if n != reference] if reference in per_case else []
    for name in compared:
        for target, classes in targets.items():
            gap = synthesis_gap(per_case[name], per_case[reference], [f"mean_error/{c}" for c in classes])
            low_key, high_key = (prefix + target for prefix in GAP_INTERVAL_KEYS)
            rows[name].update({f"mean_error_gap/{target}": gap["gap"], low_key: gap["low"], high_key: gap["high"]})
            gaps.append(_gap_sentence(name, reference, target, unit, gap))
    if gaps:
        lines += ["", f"Gap to the {reference} on the mean error (negative: closer to the real image), with its "
                  f"{100 * GAP_CONFIDENCE:g} % interval from a paired bootstrap over the {n} cases:", "", *gaps]
    return "\n".join(lines), rows


def pixel_section(
    scores: Mapping[str, Sequence[np.ndarray]], errors: Sequence[np.ndarray], region: str
) -> tuple[str, dict]:
    """Pixel-level failure metrics (×100) of each error map, pooled and per image.

    Args:
        scores: method -> per-image error scores (higher = more likely wrong), each aligned with ``errors``.
        errors: per-image bool maps, True = wrongly segmented voxel.
        region: where the maps are evaluated (for the heading text).
    """
    data: dict[str, dict[str, dict]] = {}
    blocks = []
    for reduction in ("pooled", "per_image"):
        data[reduction] = {m: pixel_failure_metrics(list(s), list(errors), reduction=reduction) for m, s in scores.items()}
        used = next(iter(data[reduction].values()), {}).get("num_images_used", "?")
        blocks += [f"**{reduction}** ({used} images used)", "", markdown_table(data[reduction], PIXEL_COLUMNS), ""]
    lines = [
        "## Pixel-level error maps (x100)",
        "",
        f"Voxels {region}; positives = wrongly segmented voxels. `pooled`: all voxels of the split together; "
        "`per_image`: the mean over the images holding both wrong and right voxels.",
        "",
        *blocks,
    ]
    return "\n".join(lines).rstrip(), data


def synthesis_use_section(
    reference: np.ndarray,
    variants: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    name: str = "SynthCP",
    shown: Sequence[str] | None = None,
    average: bool = False,
) -> tuple[str, dict]:
    """How far the predicted quality ``(N, C)`` moves when ``x̂`` is replaced, against its spread across cases.

    Args:
        reference: the prediction with ``x̂ = G(ŷ)`` ``(N, C)``; NaN marks an (image, class) pair left out (e.g. one
            whose true quality is undefined).
        variants: the ablation's name -> its prediction ``(N, C)``.
        class_names: the ``C`` class names.
        name: the method, for the text.
        shown: the classes given a column (default: all but class 0, the background of the 3D study).
        average: add a first column, the mean over the classes of ``class_names`` with a finite value.
    """
    reference = np.asarray(reference, dtype=np.float64)
    shown = list(class_names[1:] if shown is None else shown)
    averaged = [c for k, c in enumerate(class_names) if np.isfinite(reference[:, k]).any()] if average else []
    mean_key = f"mean over {len(averaged)} classes"
    data: dict[str, dict[str, float]] = {}
    rows = []
    for variant, values in variants.items():
        diff = np.abs(np.asarray(values, dtype=np.float64) - reference)
        data[variant] = {c: _nanmean(diff[:, k]) for k, c in enumerate(class_names) if c in shown or c in averaged}
        if average:
            data[variant][mean_key] = _nanmean([data[variant][c] for c in averaged])
    spread = {c: float(np.std(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")
              for c, v in zip(class_names, reference.T) if c in shown or c in averaged}
    if average:
        spread[mean_key] = _nanmean([spread[c] for c in averaged])
    columns = ([mean_key] if average else []) + shown
    for variant in data:
        rows.append(f"| {variant} | " + " | ".join(_cell(data[variant][c]) for c in columns) + " |")
    rows.append(f"| (spread of {name}'s prediction across cases, SD) | "
                + " | ".join(_cell(spread[c]) for c in columns) + " |")
    constant = [c for c in shown if spread[c] < 0.01]
    lines = [
        f"## Does the comparator use x̂? Mean |change| of {name}'s predicted quality",
        "",
        "| x̂ replaced by | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
        *rows,
    ]
    if constant:
        lines += ["", f"**{name}'s quality head is (nearly) constant for {', '.join(constant)}** (SD < 0.01 across cases): "
                  "it has collapsed to one value and this table cannot tell whether it uses x̂; the pixel-level "
                  "table's x̂ rows can."]
    return "\n".join(lines), {"mean_abs_change": data, "prediction_sd": spread}


def feature_spread(features: Any) -> float:
    """Relative spread of pooled features ``(N, F)`` across cases: the mean over features of their SD across the
    ``N`` cases (ddof 0), divided by the mean absolute feature value; 0 for identical rows."""
    f = np.asarray(features, dtype=np.float64)
    scale = float(np.abs(f).mean())
    return float(f.std(axis=0).mean() / scale) if scale > 0 else 0.0


def feature_spread_section(features: Mapping[str, Any]) -> tuple[str, dict]:
    """Per comparator, the relative spread (:func:`feature_spread`) of the pooled encoder features its quality head
    reads, over the test cases, and whether it has collapsed (below ``COLLAPSED_BELOW``)."""
    data = {name: {"relative_spread": feature_spread(f), "cases": int(np.asarray(f).shape[0])}
            for name, f in features.items()}
    for row in data.values():
        row["collapsed"] = row["relative_spread"] < COLLAPSED_BELOW
    lines = [
        "## Do the comparators' encoders tell cases apart?",
        "",
        "The quality head reads the encoder's pooled deepest features. Relative spread = mean SD of those features "
        f"across the test cases / their mean |value|; below {COLLAPSED_BELOW} the encoder has collapsed (every case "
        "looks the same to the head, which then predicts a constant).",
        "",
        "| comparator | relative spread | collapsed |",
        "|---|---:|---|",
        *[f"| {n} | {r['relative_spread']:.3f} | {'**yes**' if r['collapsed'] else 'no'} |" for n, r in data.items()],
    ]
    return "\n".join(lines), data


def _cell(value: float) -> str:
    return f"{value:.3f}" if np.isfinite(value) else "n/a"


def comparison_figure(panels: Sequence[Mapping[str, Any]], path: Any, title: str = "") -> Any:
    """One row per case: what the comparator sees and what it says, on the slice given per case.

    Each panel mapping holds 2D arrays (one slice): ``image`` (x), ``label`` (ground truth), ``pred`` (ŷ),
    ``synthesis`` (G(ŷ)), ``painter`` (the painter's image of ŷ), ``error_prob`` (SynthCP's error map) and
    ``error`` (true wrong voxels); ``caption`` (str) titles the row. Images are in [-1, 1]. Writes a PNG atomically.
    """
    columns = ("x + ground truth", "x + prediction ŷ", "G(ŷ)", "painter(ŷ)", "|x − G(ŷ)|", "SynthCP error map")
    fig = Figure(figsize=(2.3 * len(columns), 2.4 * len(panels)), dpi=90)  # no pyplot: no global backend
    axes = fig.subplots(len(panels), len(columns), squeeze=False)
    for row, panel in zip(axes, panels):
        shown = (panel["image"], panel["image"], panel["synthesis"], panel["painter"],
                 np.abs(panel["image"] - panel["synthesis"]), panel["error_prob"])
        for k, (ax, img) in enumerate(zip(row, shown)):
            kw = {"cmap": "gray", "vmin": -1, "vmax": 1} if k < 4 else {"cmap": "magma", "vmin": 0, "vmax": 1 if k == 5 else 2}
            ax.imshow(np.asarray(img).T, origin="lower", **kw)
            contour = panel["label"] if k == 0 else panel["pred"] if k in (1, 2, 3) else None
            if contour is not None:
                ax.contour(np.asarray(contour).T, levels=[0.5, 1.5], colors=["lime", "red"], linewidths=0.7)
            if k == 5 and np.asarray(panel["error"]).any():
                ax.contour(np.asarray(panel["error"]).T.astype(float), levels=[0.5], colors=["cyan"], linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(panel.get("caption", ""), fontsize=7)
    for ax, name in zip(axes[0], columns):
        ax.set_title(name, fontsize=8)
    fig.suptitle(title + "  (green: pancreas, red: tumour; cyan: truly wrong voxels)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
