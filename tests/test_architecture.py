"""Import boundaries: what a module pulls in when it is imported in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

STAGES = "synthcp3d.workflows.pancreas"

# Imports the alarm's modules, records whether the training stages came with them, then imports the stages (the
# second record shows the probe can see them).
PROBE = f"""
import json, sys
import synthcp3d.alarm, synthcp3d.alarm.bundle_predictor, synthcp3d.workflows.pancreas_model
after_alarm = {STAGES!r} in sys.modules
import {STAGES}
print(json.dumps({{"after_alarm": after_alarm, "after_stages": {STAGES!r} in sys.modules}}))
"""


def test_the_alarm_does_not_import_the_training_stages() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"after_alarm": False, "after_stages": True}


def test_the_study_runner_registers_no_study_in_python() -> None:
    """``synthcp run`` finds the studies in the bundles' configs/study.yaml: importing it pulls in no 2D study."""
    probe = (
        "import json, sys\n"
        "from synthcp3d.study_cli import STUDIES\n"
        "print(json.dumps({'studies': sorted(STUDIES), 'twod': any(m.startswith('synthcp2d') for m in sys.modules)}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"studies": ["cityscapes", "pancreas", "streethazards"], "twod": False}
