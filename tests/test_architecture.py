"""Architecture rules: import boundaries (what a module pulls in when it is imported in a fresh interpreter) and
module sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STAGES = (
    "synthcp3d.workflows.pancreas",
    "synthcp3d.workflows.pancreas_judges",
    "synthcp3d.workflows.pancreas_report",
    # the training bodies and the trainers they drive
    "synthcp3d.workflows.protocol",
    "synthcp3d.workflows.protocol_judges",
    "synthcp3d.engines.workflow",
    "synthcp3d.engines.training",
    "synthcp3d.engines.segmentation",
    "synthcp3d.engines.gan",
    "synthcp3d.engines.comparator",
    "synthcp3d.engines.mask_vae",
)

# Imports the alarm's modules and the trained model, records which training modules (stages, bodies, trainers) came
# with them, then imports the stages (the second record shows the probe can see them).
PROBE = f"""
import json, sys
import synthcp3d.alarm, synthcp3d.alarm.api, synthcp3d.alarm.cli, synthcp3d.alarm.bundle_predictor
import synthcp3d.workflows.pancreas_model, synthcp3d.workflows.pancreas_scoring
after_alarm = [m for m in {STAGES!r} if m in sys.modules]
import {", ".join(STAGES)}
print(json.dumps({{"after_alarm": after_alarm, "after_stages": [m for m in {STAGES!r} if m in sys.modules]}}))
"""


def _run_probe(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; the JSON of its last printed line."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_alarm_does_not_import_the_training_stages() -> None:
    seen = _run_probe(PROBE)
    assert seen == {"after_alarm": [], "after_stages": list(STAGES)}


def test_the_study_runner_registers_no_study_in_python() -> None:
    """``synthcp run`` finds the studies in the bundles' configs/study.yaml: importing it pulls in no 2D study."""
    probe = (
        "import json, sys\n"
        "from synthcp3d.study_cli import STUDIES\n"
        "print(json.dumps({'studies': sorted(STUDIES), 'twod': any(m.startswith('synthcp2d') for m in sys.modules)}))"
    )
    seen = _run_probe(probe)
    assert seen == {"studies": ["cityscapes", "pancreas", "streethazards"], "twod": False}


def test_the_alarm_and_the_exporter_find_the_pancreas_bundle_without_the_command_line() -> None:
    """The pancreas bundle's configs come from `synthcp3d.study_registry` (below them), not from ``study_cli``."""
    probe = (
        "import json, sys, tempfile\n"
        "import synthcp3d.export.bundle as export\n"
        "from synthcp3d.alarm.bundle_predictor import pancreas_config\n"
        "pancreas_config(tempfile.mkdtemp())\n"
        "folder, meta = export._study_bundle()\n"
        "print(json.dumps({'bundle': folder.name, 'cli': 'synthcp3d.study_cli' in sys.modules}))"
    )
    seen = _run_probe(probe)
    assert seen == {"bundle": "pancreas_ct_synthcp", "cli": False}


ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def test_no_module_over_500_lines() -> None:
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for package in ("synthcp3d", "synthcp2d")
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"
