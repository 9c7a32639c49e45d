"""``benchmarks/gpu_check.py --dry-run``: every part at tiny sizes on the CPU, so the GPU check cannot rot between GPU
runs. No timing is asserted (the dry run's figures say nothing about a GPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # gpu_check imports bench_alarm and bench_metrics as its neighbours

import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("gpu_check")
    return out, gpu_check.main(["--out", str(out), "--dry-run"])


def test_dry_run_reports_every_part_without_failure(dry_run: tuple[Path, int]) -> None:
    out, status = dry_run
    result = json.loads((out / gpu_check.JSON_NAME).read_text())
    assert status == 0 and result["dry_run"] is True
    assert list(result["parts"]) == list(gpu_check.PARTS)
    for name, part in result["parts"].items():
        assert part["status"] in ("ok", "skipped"), (name, part["reason"], part["tracebacks"])
        assert part["status"] == "ok" or part["reason"], name
        assert part["seconds"] >= 0.0 and not part["tracebacks"], name
    parts = result["parts"]
    assert parts["cuda_tests"]["status"] == "skipped" and "CUDA" in parts["cuda_tests"]["reason"]
    assert parts["study"]["status"] == "skipped"
    steps = parts["train_steps"]["rows"]
    for kind in ("GAN step", "segmenter step", "comparator step"):
        rows = {key: row for key, row in steps.items() if key.startswith(kind)}
        assert len(rows) == len(gpu_check.VARIANTS), kind
        assert all(row["status"] == "ok" or row["status"].startswith("skipped: needs CUDA") for row in rows.values())
        assert [row["steps_per_s"] > 0 for row in rows.values() if row["status"] == "ok"] == [True, True], kind
    assert parts["distributed"]["figures"]["identical_weights"] is True
    assert set(parts["alarm"]["rows"]) >= {"segment", "synthesize", "compare", "vae", "total"}
    assert parts["alarm"]["figures"]["total_over_segment_stage"] > 1.0
    assert any(row.get("ms_per_mvoxel", 0) > 0 for row in parts["sliding_window"]["rows"].values())
    # each dry-run volume fits in one window (its size is the window's or smaller): the counter must say so
    timed = [row for row in parts["sliding_window"]["rows"].values() if row["status"] == "ok"]
    assert timed and all(row["windows"] == 1 and row["ms_per_window"] > 0 for row in timed)
    figures = parts["sliding_window"]["figures"]
    assert figures["fp32_max_over_min_cost_per_window"] >= 1.0 and figures["bf16_max_over_min_cost_per_window"] is None
    assert parts["streaming_metrics"]["figures"]["pixels"] == 10**6


def test_dry_run_markdown_has_a_section_per_part(dry_run: tuple[Path, int]) -> None:
    out, _ = dry_run
    text = (out / gpu_check.MARKDOWN_NAME).read_text()
    assert text.startswith("# GPU check\n") and "**dry run**" in text
    for name in gpu_check.PARTS:
        assert f"\n## {name}\n" in text
    assert "skipped" in text and "needs CUDA" in text


def test_a_failing_part_is_recorded_and_the_next_one_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(check: gpu_check.Check, part: gpu_check.Part) -> None:
        part.notes.append("got this far")
        raise RuntimeError("deliberate failure")

    monkeypatch.setitem(gpu_check.PARTS, "sliding_window", broken)
    status = gpu_check.main(["--out", str(tmp_path), "--dry-run", "--parts", "sliding_window,streaming_metrics"])
    result = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    assert status == 1 and list(result["parts"]) == ["sliding_window", "streaming_metrics"]
    failed, after = result["parts"]["sliding_window"], result["parts"]["streaming_metrics"]
    assert failed["status"] == "failed" and failed["reason"] == "RuntimeError: deliberate failure"
    assert "deliberate failure" in failed["tracebacks"][0] and failed["notes"] == ["got this far"]
    assert after["status"] == "ok" and after["rows"]
    assert "deliberate failure" in (tmp_path / gpu_check.MARKDOWN_NAME).read_text()


def test_a_failing_measurement_fails_its_part_but_not_its_neighbours(tmp_path: Path) -> None:
    check = gpu_check.Check(tmp_path, gpu_check.DRY, gpu_check.torch.device("cpu"), tmp_path)

    def two_rows(check: gpu_check.Check, part: gpu_check.Part) -> None:
        with part.guard("bad"):
            raise ValueError("one row")
        with part.guard("good"):
            part.rows["good"] = {"status": "ok"}

    result = gpu_check.run_part("two_rows", two_rows, check)
    assert result["status"] == "failed" and "1 measurement(s) failed" in result["reason"]
    assert result["rows"] == {"bad": {"status": "failed: ValueError"}, "good": {"status": "ok"}}


def test_pytest_counts_reads_the_summary_line() -> None:
    output = "....\nFAILED tests/test_x.py::test_y - boom\n1 failed, 4 passed, 310 deselected, 2 warnings in 21.37s\n"
    assert gpu_check.pytest_counts(output) == {"failed": 1, "passed": 4, "deselected": 310, "warnings": 2}
    assert gpu_check.pytest_counts("1 error in 0.5s") == {"errors": 1}


def test_window_counter_counts_the_sliding_windows() -> None:
    """2 x 3 x 1 windows of 16^3 without overlap tile a 32 x 48 x 16 volume; batches of 4 make 2 calls (4 + 2)."""
    from synthcp3d.engines.inference import sliding_window_segment

    net = gpu_check.WindowCounter(gpu_check.torch.nn.Conv3d(1, 2, 1))
    image = gpu_check.torch.zeros(1, 1, 32, 48, 16)
    logits = sliding_window_segment(image, net, (16, 16, 16), sw_batch_size=4, overlap=0.0)
    assert logits.shape == (1, 2, 32, 48, 16) and net.windows == 6


def test_cudnn_benchmark_variant_sets_the_flag_while_it_runs_only(tmp_path: Path, monkeypatch) -> None:
    check = gpu_check.Check(tmp_path, gpu_check.DRY, gpu_check.torch.device("cpu"), tmp_path)
    seen = []

    def fake_time_steps(trainer, warmup: int, check: gpu_check.Check) -> tuple[float, float]:
        seen.append(gpu_check.torch.backends.cudnn.benchmark)
        if len(seen) == 2:
            raise RuntimeError("a failing measurement")
        return 1.0, 0.1

    monkeypatch.setattr(gpu_check, "time_steps", fake_time_steps)
    variant = next(v for v in gpu_check.VARIANTS if v.cudnn_benchmark)
    before = gpu_check.torch.backends.cudnn.benchmark
    gpu_check.measure_step("segmenter", check, variant)
    with pytest.raises(RuntimeError):
        gpu_check.measure_step("segmenter", check, variant)
    assert seen == [True, True] and gpu_check.torch.backends.cudnn.benchmark is before
