"""Mean ± SD over seeds of saved reports, checked on hand-made report.json files."""

from __future__ import annotations

import json

import pytest

from synthcp3d.errors import SynthCPInputError
from synthcp3d.seed_summary import main, summarize_reports


def _report(path, mae, pc, seg_mean):
    payload = {
        "title": "T", "quality": "DSC",
        "tables": {"tumour": {"SynthCP": {"MAE": mae, "STD": 1.0, "PC": pc, "SC": None}}},
        "extra": {"segmenter": {"segmenter": "UNet", "splits": {"test": {"tumour": {"mean": seg_mean, "sd": 0.1,
                                                                                     "failures": 0.5}}}}},
    }
    path.write_text(json.dumps(payload))
    return path


def test_mean_and_sd_over_runs(tmp_path):
    a = _report(tmp_path / "a.json", 10.0, 50.0, 0.3)
    b = _report(tmp_path / "b.json", 14.0, 70.0, 0.5)
    md = summarize_reports([a, b])
    assert "| SynthCP | 12.00 ± 2.83 | 1.00 ± 0.00 | 60.00 ± 14.14 | n/a |" in md
    assert "| test: tumour | 40.00 ± 14.14 | 10.00 ± 0.00 | 50.00 ± 0.00 |" in md
    out = tmp_path / "summary.md"
    assert main([str(a), str(b), "--out", str(out)]) == 0 and out.read_text().startswith("# T")


def test_unreadable_report_is_refused(tmp_path):
    with pytest.raises(SynthCPInputError, match="cannot read report"):
        summarize_reports([tmp_path / "missing.json"])


def test_comparator_collapse_counted_over_runs(tmp_path):
    paths = []
    for k, (spread, collapsed) in enumerate(((0.37, False), (0.004, True))):
        payload = json.loads(_report(tmp_path / f"{k}.json", 10.0, 50.0, 0.3).read_text())
        payload["extra"]["comparator_features"] = {"SynthCP": {"relative_spread": spread, "collapsed": collapsed}}
        (tmp_path / f"{k}.json").write_text(json.dumps(payload))
        paths.append(tmp_path / f"{k}.json")
    assert "| SynthCP | 0.370 | 0.004 | 1 of 2 |" in summarize_reports(paths)


def test_anomaly_reports_summarised_per_reduction(tmp_path):
    """StreetHazards reports: tables per reduction of FPR95 / AUROC / AUPR, the segmenter's mIoU, the synthesis."""
    paths = []
    for k, (auroc, miou, err) in enumerate(((60.0, 0.5, 30.0), (70.0, 0.4, 34.0))):
        payload = {
            "tables": {"per_image": {"MSP": {"FPR95": 50.0, "AUROC": auroc, "AUPR": 3.0, "reduction": "per_image"}},
                       "pooled": {"MSP": {"FPR95": 80.0, "AUROC": auroc - 5, "AUPR": 2.0}}},
            "segmenter": "unet", "segmenter_miou": miou,
            "synthesis": {"G": {"mean_error": err - 1.0, "mean_error_gap/mean over classes": -1.0 + k,
                                "mean_error_gap_low/mean over classes": -3.0, "mean_error_gap_high/mean over classes": 1.0},
                          "class-mean painter": {"mean_error": err, "ssim": 0.1}},
        }
        paths.append(tmp_path / f"r{k}.json")
        paths[-1].write_text(json.dumps(payload))
    md = summarize_reports(paths)
    assert "Segmenter (unet) mIoU: 45.00 ± 7.07 (x100)" in md
    assert "## reduction `per_image` (x100)" in md and "| Method | FPR95 ↓ | AUROC ↑ | AUPR ↑ |" in md
    assert "| MSP | 50.00 ± 0.00 | 65.00 ± 7.07 | 3.00 ± 0.00 |" in md
    assert "| MSP | 80.00 ± 0.00 | 60.00 ± 7.07 | 2.00 ± 0.00 |" in md
    assert "## Synthesis quality (colour levels 0-255; SSIM)" in md and "| class-mean painter | 32.00 ± 2.83 |" in md
    # each run's gap is summarised; its interval bounds are not (a mean of bounds is no interval)
    assert "| G | 31.00 ± 2.83 | -0.50 ± 0.71 |" in md and "gap_low" not in md and "gap_high" not in md
    quality = _report(tmp_path / "q.json", 10.0, 50.0, 0.3)
    with pytest.raises(SynthCPInputError, match="one kind"):
        summarize_reports([paths[0], quality])
    (tmp_path / "no_tables.json").write_text(json.dumps({"segmenter_miou": {"fcn8": 0.2}}))
    with pytest.raises(SynthCPInputError, match="one kind"):
        summarize_reports([tmp_path / "no_tables.json"])
