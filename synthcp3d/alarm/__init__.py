"""The DSC alarm on new CT volumes: Python API (:class:`DSCAlarm`, :class:`AlarmReport`) and ``synthcp alarm``."""

from __future__ import annotations

from synthcp3d.alarm.api import DEFAULT_THRESHOLD, DSCAlarm
from synthcp3d.alarm.calibration import CalibrationResult, choose_threshold
from synthcp3d.alarm.inputs import CaseInput, discover_inputs
from synthcp3d.alarm.predictor import Prediction, Predictor
from synthcp3d.alarm.report import FLAG_RULE, AlarmReport

__all__ = [
    "DSCAlarm",
    "AlarmReport",
    "Prediction",
    "Predictor",
    "CaseInput",
    "discover_inputs",
    "choose_threshold",
    "CalibrationResult",
    "FLAG_RULE",
    "DEFAULT_THRESHOLD",
]
