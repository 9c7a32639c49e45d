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
