"""Mean ± SD over seeds of the quality reports that ``evaluate`` writes (one ``report.json`` per seed).

    python -m synthcp3d.seed_summary runs/seed0/evaluate/report.json runs/seed1/evaluate/report.json ... [--out F]

Prints (and with ``--out`` writes) Markdown: per table (e.g. tumour, pancreas) the methods × metrics as mean ± SD
over the runs, the segmenter's true DSC and the synthesis and pixel-level figures the same way. An anomaly report
(StreetHazards: tables per reduction of FPR95 / AUROC / AUPR, no quality measure) is summarised the same way, with its
segmenter's mIoU. Every number is taken from the runs' own reports; the runs stay in their folders.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthcp3d.errors import SynthCPInputError
from synthcp3d.evidence import GAP_INTERVAL_KEYS
from synthcp3d.report import METRIC_COLUMNS
from synthcp3d.utils.atomic import atomic_save_text

__all__ = ["summarize_reports", "main"]

#: columns of an anomaly report's tables (x100 already), as the StreetHazards evaluate stage writes them
ANOMALY_COLUMNS = (("FPR95", "FPR95 ↓"), ("AUROC", "AUROC ↑"), ("AUPR", "AUPR ↑"))


def _mean_sd(values: Sequence[Any]) -> str:
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    runs = v.size
    v = v[np.isfinite(v)]
    if not v.size:
        return "n/a"
    if v.size == 1:
        return f"{v[0]:.2f}" + (f" (1 of {runs} runs)" if runs > 1 else "")
    text = f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"
    return text + (f" ({v.size} of {runs} runs)" if v.size < runs else "")


def _table(rows: dict[str, list[dict]], columns: Sequence[tuple[str, str]], first: str, scale: float = 1.0) -> list[str]:
    lines = [f"| {first} | " + " | ".join(t for _, t in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, runs in rows.items():
        cells = [_mean_sd([None if r.get(k) is None else scale * r[k] for r in runs]) for k, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def summarize_reports(paths: Sequence[str | Path]) -> str:
    """Markdown summary (mean ± SD over the given ``report.json`` files) of their tables and evidence."""
    reports = []
    for path in paths:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            raise SynthCPInputError(f"cannot read report {path}: {err}") from None
    if not reports:
        raise SynthCPInputError("give at least one report.json")
    kinds = {"quality" if "quality" in r else "anomaly" for r in reports}
    if len(kinds) > 1 or not all(isinstance(r.get("tables"), dict) for r in reports):
        raise SynthCPInputError("give report.json files of one kind, each with its tables (image-level quality "
                                "reports, or StreetHazards anomaly reports)")
    anomaly = kinds == {"anomaly"}
    title = reports[0].get("title", "Anomaly segmentation" if anomaly else "Quality prediction")
    lines = [f"# {title} — mean ± SD over {len(reports)} run(s)", ""]
    lines += [f"Runs: {', '.join(str(p) for p in paths)}", ""]
    if all("segmenter_miou" in r for r in reports):
        names = sorted({str(r.get("segmenter", "segmenter")) for r in reports})
        lines += [f"Segmenter ({', '.join(names)}) mIoU: {_mean_sd([100.0 * r['segmenter_miou'] for r in reports])} "
                  "(x100)", ""]
    for group in reports[0]["tables"]:
        rows: dict[str, list[dict]] = {}
        for r in reports:
            for method, values in r["tables"].get(group, {}).items():
                rows.setdefault(method, []).append(values)
        heading = f"reduction `{group}`" if anomaly else f"{group} {reports[0]['quality']} prediction"
        lines += [f"## {heading} (x100)", ""]
        lines += _table(rows, ANOMALY_COLUMNS if anomaly else METRIC_COLUMNS, "Method") + [""]
    extras = [r.get("extra", {}) for r in reports]
    if all("synthesis" in r for r in reports):  # the 2D reports keep it at the top level
        extras = [{**e, "synthesis": r["synthesis"]} for e, r in zip(extras, reports)]
    if all("segmenter" in e for e in extras):
        splits = extras[0]["segmenter"]["splits"]
        lines += [f"## True DSC of the judged segmenter ({extras[0]['segmenter']['segmenter']}), x100", ""]
        rows = {}
        for split in splits:
            for cls in splits[split]:
                rows[f"{split}: {cls}"] = [e["segmenter"]["splits"][split][cls] for e in extras]
        lines += _table(rows, (("mean", "mean"), ("sd", "SD"), ("failures", "share < 0.3")), "split: class", 100.0)
        lines += [""]
    if all("synthesis" in e for e in extras):
        # a run's interval bounds do not average into an interval: the summary keeps each run's gap itself
        keys = [k for k in next(iter(extras[0]["synthesis"].values())) if not k.startswith(GAP_INTERVAL_KEYS)]
        rows = {name: [e["synthesis"][name] for e in extras] for name in extras[0]["synthesis"]}
        unit = "colour levels 0-255" if anomaly else "HU"
        lines += [f"## Synthesis quality ({unit}; SSIM)", ""]
        lines += _table(rows, [(k, k) for k in keys], "synthesizer") + [""]
    if all("comparator_features" in e for e in extras):
        names = dict.fromkeys(n for e in extras for n in e["comparator_features"])
        lines += ["## Comparator encoders: relative spread of the pooled features across test cases", "",
                  "| comparator | " + " | ".join(f"run {k + 1}" for k in range(len(extras))) + " | collapsed |",
                  "|---|" + "---:|" * len(extras) + "---:|"]
        for name in names:
            runs = [e["comparator_features"].get(name, {}) for e in extras]
            cells = [f"{r['relative_spread']:.3f}" if r else "—" for r in runs]
            collapsed = sum(bool(r.get("collapsed")) for r in runs)
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {collapsed} of {len(runs)} |")
        lines += [""]
    if all("pixel" in e for e in extras):
        for reduction in extras[0]["pixel"]:
            methods = dict.fromkeys(m for e in extras for m in e["pixel"].get(reduction, {}))
            rows = {m: [e["pixel"].get(reduction, {}).get(m, {}) for e in extras] for m in methods}
            cols = (("AUPR_Error", "AUPR-Error ↑"), ("AUPR_Success", "AUPR-Success ↑"), ("AUROC", "AUROC ↑"),
                    ("FPR95", "FPR95 ↓"))
            lines += [f"## Pixel-level error maps, {reduction} (x100)", ""] + _table(rows, cols, "Method") + [""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="report.json files, one per run")
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args(argv)
    text = summarize_reports(args.reports)
    print(text)
    if args.out:
        atomic_save_text(text + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
