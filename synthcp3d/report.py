"""Study-agnostic image-level quality report: methods x metrics tables, per-case CSV, scatter plots.

Given, for ``N`` cases and ``C`` classes, the true quality (Dice or IoU; NaN = undefined, e.g. a class absent from
both ground truth and prediction) and each method's predicted quality, :func:`quality_report` writes

- ``{prefix}.md`` / ``{prefix}.csv`` / ``{prefix}.json``: one table per requested class group, rows = methods,
  columns = MAE, STD, P.C., S.C. (x100, from :func:`synthcp3d.metrics.quality_metrics`), with the number of cases
  whose quality is undefined (excluded from the metrics) stated beside each table;
- ``per_case.csv``: one row per case: the true quality per class and every method's prediction per class
  (``nan`` = undefined), enough to recompute every table with any statistics package;
- ``scatter_<method>_<class>.png``: predicted vs true quality with the identity line (the paper's Fig. 6).

All files are written atomically. The 3D pancreas study and the 2D studies share this module.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from synthcp3d.errors import SynthCPInputError
from synthcp3d.metrics import quality_metrics, risk_coverage, risk_coverage_curve
from synthcp3d.utils.atomic import atomic_path, atomic_save_json, atomic_save_text

__all__ = ["QualityReport", "quality_report", "read_per_case_csv", "format_markdown_table", "markdown_table", "METRIC_COLUMNS"]

# (key in quality_metrics' dict, column header as in the paper's tables)
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("MAE", "MAE ↓"), ("STD", "STD ↓"), ("PC", "P.C. ↑"), ("SC", "S.C. ↑"), ("AURC", "AURC ↓"), ("E-AURC", "E-AURC ↓"),
)


@dataclass
class QualityReport:
    """What :func:`quality_report` computed and wrote.

    ``tables[group][method]`` = dict(MAE, STD, PC, SC) (x100; NaN where undefined), ``counts[group]`` = dict(
    n_cases, n_defined, n_undefined) summed over the group's classes, ``files`` = name -> path.
    """

    title: str
    tables: dict[str, dict[str, dict[str, float]]]
    counts: dict[str, dict[str, int]]
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _fmt(value: float | str) -> str:
    if isinstance(value, str):  # already formatted by the caller
        return value
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.2f}"


def markdown_table(
    rows: Mapping[str, Mapping[str, float]], columns: Sequence[tuple[str, str]], first: str = "Method"
) -> str:
    """Markdown table: one row per entry of ``rows``, ``columns`` = ``(key, title)`` pairs (numbers with two
    decimals, ``n/a`` for missing or non-finite ones; strings as they are)."""
    header = f"| {first} | " + " | ".join(title for _, title in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header, rule]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values.get(key, float("nan"))) for key, _ in columns) + " |")
    return "\n".join(lines)


def format_markdown_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table, rows = methods, columns = MAE, STD, P.C., S.C., AURC, E-AURC (two decimals, ``n/a``)."""
    return markdown_table(rows, METRIC_COLUMNS)


def _metrics(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    if np.all(np.isnan(true)):
        return {key: float("nan") for key, _ in METRIC_COLUMNS}
    result = quality_metrics(predicted, true)
    out = {key: float(result[key]) if result.get(key) is not None else float("nan") for key, _ in METRIC_COLUMNS}
    # risk–coverage per class (confidence = that class's predicted quality), averaged over the classes with cases
    per_class = [risk_coverage(predicted[:, k], true[:, k]) for k in range(true.shape[1])]
    per_class = [r for r in per_class if r["n"]]
    for key in ("AURC", "E-AURC"):
        out[key] = float(np.mean([r[key] for r in per_class])) if per_class else float("nan")
    return out


def _check(predictions: Mapping[str, np.ndarray], true: np.ndarray, case_ids: Sequence[str], class_names: Sequence[str]):
    true = np.asarray(true, dtype=np.float64)
    if true.ndim == 1:
        true = true[:, None]
    if true.ndim != 2:
        raise SynthCPInputError(f"true quality must be (N cases, C classes), got shape {true.shape}")
    if len(case_ids) != true.shape[0] or len(class_names) != true.shape[1]:
        raise SynthCPInputError(
            f"true quality has shape {true.shape} but {len(case_ids)} case ids and {len(class_names)} class names"
        )
    preds = {}
    for method, values in predictions.items():
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        if values.shape != true.shape:
            raise SynthCPInputError(f"predictions of {method!r} have shape {values.shape}, expected {true.shape}")
        preds[method] = values
    return preds, true


def quality_report(
    predictions: Mapping[str, np.ndarray],
    true: np.ndarray,
    case_ids: Sequence[str],
    class_names: Sequence[str],
    out_dir: str | Path,
    groups: Mapping[str, Sequence[str]] | None = None,
    title: str = "Image-level quality prediction",
    quality_name: str = "DSC",
    notes: Sequence[str] = (),
    prefix: str = "report",
    plot_classes: Sequence[str] | None = None,
    extra: Mapping | None = None,
    sections: Sequence[str] = (),
) -> QualityReport:
    """Compute and write the methods x metrics report.

    Args:
        predictions: method name -> predicted quality ``(N, C)`` in [0, 1] (row order = ``methods`` in the tables).
        true: true quality ``(N, C)``; NaN = undefined for that case/class (excluded from the metrics, counted).
        case_ids: ``N`` case names (first column of ``per_case.csv``).
        class_names: ``C`` class names.
        out_dir: folder for the files.
        groups: table name -> classes averaged in that table (``quality_metrics`` averages per-class values over
            classes); default one table per class.
        title: first line of the Markdown report.
        quality_name: "DSC" or "IoU" (labels of the plots and tables).
        notes: extra lines printed under the tables (e.g. the crop rule, fallback counts, demo settings).
        prefix: base name of the report files.
        plot_classes: classes that get one scatter plot per method (default: the classes used in ``groups``).
        extra: additional JSON-able content stored under ``"extra"`` in the JSON report.
        sections: extra Markdown blocks (each with its own ``##`` heading) placed after the tables, before the notes.

    Returns:
        :class:`QualityReport` with the tables, counts, Markdown text and file paths.
    """
    preds, true = _check(predictions, true, case_ids, class_names)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_index = {name: i for i, name in enumerate(class_names)}
    groups = dict(groups) if groups is not None else {name: [name] for name in class_names}
    for group, members in groups.items():
        unknown = [m for m in members if m not in class_index]
        if unknown:
            raise SynthCPInputError(f"table {group!r} names unknown classes {unknown}; classes are {list(class_names)}")

    tables: dict[str, dict[str, dict[str, float]]] = {}
    counts: dict[str, dict[str, int]] = {}
    undefined_cases: dict[str, list[str]] = {}
    for group, members in groups.items():
        cols = [class_index[m] for m in members]
        sub_true = true[:, cols]
        n_undefined = int(np.isnan(sub_true).sum())
        counts[group] = {"n_cases": int(true.shape[0]), "n_defined": int(sub_true.size - n_undefined), "n_undefined": n_undefined}
        undefined_cases[group] = [case_ids[i] for i in np.flatnonzero(np.isnan(sub_true).any(axis=1))]
        tables[group] = {method: _metrics(values[:, cols], sub_true) for method, values in preds.items()}

    lines = [f"# {title}", ""]
    for group, rows in tables.items():
        c = counts[group]
        lines += [
            f"## {group} {quality_name} prediction (x100)",
            "",
            format_markdown_table(rows),
            "",
            f"{c['n_defined']} of {c['n_cases'] * len(groups[group])} case/class values defined; "
            f"{c['n_undefined']} undefined ({quality_name} undefined: class absent from both ground truth and "
            "prediction) excluded from the metrics.",
            "",
        ]
    for section in sections:
        lines += [section.rstrip(), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    files: dict[str, Path] = {}
    files["per_case_csv"] = _write_per_case(out_dir / "per_case.csv", preds, true, case_ids, class_names)
    plot_classes = list(plot_classes) if plot_classes is not None else list(dict.fromkeys(m for ms in groups.values() for m in ms))
    for method, values in preds.items():
        for name in plot_classes:
            i = class_index[name]
            path = out_dir / f"scatter_{_slug(method)}_{_slug(name)}.png"
            files[f"scatter/{method}/{name}"] = _scatter(path, values[:, i], true[:, i], method, name, quality_name)
    for name in plot_classes:
        i = class_index[name]
        path = out_dir / f"risk_coverage_{_slug(name)}.png"
        files[f"risk_coverage/{name}"] = _risk_coverage_plot(path, {m: v[:, i] for m, v in preds.items()}, true[:, i],
                                                              name, quality_name)
    lines += ["## Files", ""] + [f"- per-case predictions: `{files['per_case_csv'].name}`"]
    lines += [f"- risk–coverage curves: `risk_coverage_<class>.png` ({len(plot_classes)} files)"]
    lines += [f"- scatter plots: `scatter_<method>_<class>.png` ({len(preds) * len(plot_classes)} files)", ""]
    markdown = "\n".join(lines)
    files["markdown"] = atomic_save_text(markdown, out_dir / f"{prefix}.md")
    files["csv"] = _write_table_csv(out_dir / f"{prefix}.csv", tables, counts)
    payload = {
        "title": title,
        "quality": quality_name,
        "scale": "x100",
        "groups": {g: list(m) for g, m in groups.items()},
        "tables": tables,
        "counts": counts,
        "undefined_cases": undefined_cases,
        "notes": list(notes),
        "files": {k: p.name for k, p in files.items() if k != "json"},
        "extra": dict(extra or {}),
    }
    files["json"] = atomic_save_json(_nan_to_none(payload), out_dir / f"{prefix}.json")
    return QualityReport(title=title, tables=tables, counts=counts, markdown=markdown, files=files)


def _nan_to_none(obj):
    # JSON has no NaN: undefined metrics become null.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def _write_per_case(path: Path, preds: Mapping[str, np.ndarray], true: np.ndarray, case_ids, class_names) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["case"] + [f"true_{c}" for c in class_names]
    for method in preds:
        header += [f"{method}|{c}" for c in class_names]
    writer.writerow(header)
    for i, case in enumerate(case_ids):
        row = [case] + [_num(v) for v in true[i]]
        for values in preds.values():
            row += [_num(v) for v in values[i]]
        writer.writerow(row)
    return atomic_save_text(buf.getvalue(), path)


def _num(value: float) -> str:
    return "nan" if not math.isfinite(value) else repr(float(value))


def read_per_case_csv(path: str | Path) -> tuple[list[str], dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Read ``per_case.csv`` back: (case ids, class -> true values (N,), method -> class -> predicted (N,))."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][0] != "case":
        raise SynthCPInputError(f"{path} is not a per-case quality CSV (first column must be 'case')")
    header, body = rows[0], rows[1:]
    cases = [r[0] for r in body]
    true: dict[str, np.ndarray] = {}
    pred: dict[str, dict[str, np.ndarray]] = {}
    for j, name in enumerate(header[1:], start=1):
        values = np.array([float(r[j]) for r in body], dtype=np.float64)
        if name.startswith("true_"):
            true[name[len("true_") :]] = values
        else:
            method, cls = name.rsplit("|", 1)
            pred.setdefault(method, {})[cls] = values
    return cases, true, pred


def _write_table_csv(path: Path, tables, counts) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["table", "method", *(key for key, _ in METRIC_COLUMNS), "n_defined", "n_undefined"])
    for group, rows in tables.items():
        for method, values in rows.items():
            writer.writerow(
                [group, method]
                + [_num(values[key]) for key, _ in METRIC_COLUMNS]
                + [counts[group]["n_defined"], counts[group]["n_undefined"]]
            )
    return atomic_save_text(buf.getvalue(), path)


def _scatter(path: Path, predicted: np.ndarray, true: np.ndarray, method: str, class_name: str, quality_name: str) -> Path:
    keep = ~np.isnan(true) & ~np.isnan(predicted)
    fig = Figure(figsize=(4, 4), dpi=100)  # no pyplot: no global backend or figure registry
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="identity")
    ax.scatter(true[keep], predicted[keep], s=14, alpha=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(f"true {class_name} {quality_name}")
    ax.set_ylabel(f"predicted {class_name} {quality_name}")
    ax.set_title(f"{method} (n={int(keep.sum())})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _risk_coverage_plot(path: Path, predicted: Mapping[str, np.ndarray], true: np.ndarray, class_name: str,
                        quality_name: str) -> Path:
    """Selective risk (1 - true quality of the accepted cases) against coverage, one curve per method + oracle."""
    fig = Figure(figsize=(5.5, 4), dpi=100)
    ax = fig.subplots()
    for method, values in {**predicted, "oracle (true quality)": true}.items():
        coverage, risk = risk_coverage_curve(values, true)
        if coverage.size:
            aurc = risk_coverage(values, true)["AURC"]
            style = {"color": "black", "linestyle": "--"} if method.startswith("oracle") else {}
            ax.step(np.r_[0.0, coverage], np.r_[risk[0], risk], where="post", label=f"{method} ({aurc:.1f})", **style)
    ax.set_xlabel("coverage (share of cases accepted, most confident first)")
    ax.set_ylabel(f"risk: mean 1 − {quality_name} of accepted")
    ax.set_xlim(0, 1)
    ax.set_title(f"{class_name}: risk–coverage (AURC x100 in brackets)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:  # no curve when no case has a defined quality
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
