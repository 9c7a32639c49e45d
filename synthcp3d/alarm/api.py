"""The DSC alarm for new CT volumes, as a Python API.

.. code-block:: python

    from synthcp3d.alarm import DSCAlarm

    alarm = DSCAlarm.from_bundle("bundles/pancreas_ct_synthcp", device="cpu")
    report = alarm("case.nii.gz")                  # or alarm((array_xyz, affine_4x4))
    print(report.predicted_dsc["ensemble"]["tumour"], report.flagged)
    report = alarm("case.nii.gz", mask="nnunet/case.nii.gz", labels="pancreas=1,tumour=2")  # judge another mask
    for report in alarm.run_batch(paths, out_dir="alarm_out"):
        ...

Each case: load (NIfTI or DICOM series, checked) -> the bundle's preprocessing as in training (Orientation RAS,
Spacing, HU window) -> predictor (segment, synthesize, compare, VAE alarm, ensemble) on the working grid ->
segmentation and error probability resampled back onto the input's own grid and affine (by the affines, so any
orientation, spacing or obliquity round-trips) -> flag (:func:`~synthcp3d.alarm.report.flag_rule`).

With ``mask=`` the alarm judges that segmentation instead of running the bundle's segmenter
(:mod:`synthcp3d.alarm.masks`: label values mapped, grid checked and matched); the report says which was judged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from synthcp3d.alarm import masks, overview  # overview as a module: a test replaces overview.save_overview
from synthcp3d.alarm.bundle_predictor import BundlePredictor
from synthcp3d.alarm.calibration import read_calibration
from synthcp3d.alarm.inputs import CaseInput, case_name, discover_inputs
from synthcp3d.alarm.predictor import STAGES, Prediction, Predictor
from synthcp3d.alarm.report import DEFAULT_FLAG_METHOD, AlarmReport, check_flag_method, flag_case
from synthcp3d.alarm.timing import StageTimer
from synthcp3d.data import volume_io  # the checks (4D, 2D, NaN, corrupt, two series ...) live there
from synthcp3d.data.geometry import affine_of, as_metatensor, resample_to_grid
from synthcp3d.data.volume_io import save_like
from synthcp3d.errors import SynthCPInputError
from synthcp3d.workflows.pancreas_scoring import to_native_grid

__all__ = ["DSCAlarm", "DEFAULT_THRESHOLD", "resolve_device", "check_writable", "output_folder", "write_case_outputs", "load_predictor"]

logger = logging.getLogger(__name__)

#: Threshold used when neither the caller nor the bundle's calibration gives one.
DEFAULT_THRESHOLD = 0.5

VolumeInput = str | os.PathLike | tuple[np.ndarray, np.ndarray] | Any


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cuda"``/``"cpu"``/None (CUDA when available) -> ``torch.device``; refuse CUDA when there is none."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SynthCPInputError(f"device {device!s} asked for, but CUDA is not available here: use --device cpu")
    return dev


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """`check_writable` for a command: the folders it had to create are removed again if the command fails while
    they are still empty, so a refused run leaves nothing behind."""
    folder = Path(folder).expanduser()
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    out = check_writable(folder)
    try:
        yield out
    except BaseException:
        for path in created:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()  # only an empty folder goes
        raise


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there; refuse with one line otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise SynthCPInputError(f"output folder {folder} is not writable ({err.strerror or err})") from None
    return folder


class _CaptureWarnings(logging.Handler):
    """Collects warning-level log records (e.g. "intensity range does not look like CT") for the report."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    handler = _CaptureWarnings()
    root = logging.getLogger("synthcp3d")
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            yield handler.messages
        handler.messages.extend(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    finally:
        root.removeHandler(handler)


def _load_volume(source: VolumeInput) -> tuple[np.ndarray, np.ndarray, str]:
    """Load a user volume -> (array (X, Y, Z) float32 in HU, affine 4x4, source text), checked at the boundary."""

    if isinstance(source, tuple) and len(source) == 2:
        array, affine = source
        volume = volume_io.ct_volume_from_array(np.asarray(array), np.asarray(affine, dtype=np.float64))
    elif hasattr(source, "array") and hasattr(source, "affine"):
        volume = source
    else:
        volume = volume_io.load_ct_volume(source)
    return np.asarray(volume.array, dtype=np.float32), np.asarray(volume.affine, dtype=np.float64), str(volume.source)


def load_predictor(bundle: str | os.PathLike, device: torch.device) -> Predictor:
    """The trained bundle's networks as a :class:`Predictor` (one seam, so tests can substitute a stand-in)."""
    return BundlePredictor.from_bundle(bundle, device=device)


@dataclass
class GivenMask:
    """A segmentation given to judge: its source, label mapping, and class indices ``(X, Y, Z)`` on its own grid."""

    source: str
    labels: dict[str, int]
    classes: np.ndarray
    affine: np.ndarray
    unclaimed: list[int]

    def describe(self) -> dict[str, Any]:
        return {"segmentation": "given mask", "mask": self.source, "labels": dict(self.labels)}

    def on_image_grid(
        self, image_affine: np.ndarray, image_shape: tuple[int, ...], device: torch.device | None = None
    ) -> np.ndarray:
        """The class indices on the image's grid ``(X, Y, Z)`` uint8 (nearest; unchanged when the grids are equal)."""
        return to_native_grid(self.classes, self.affine, image_affine, image_shape, device=device)


class DSCAlarm:
    """Predicts tumour (and pancreas) DSC for a CT volume and flags the cases whose segmentation needs checking.

    Args:
        predictor: the networks (:class:`~synthcp3d.alarm.predictor.Predictor`), e.g. from a trained bundle.
        threshold: flag threshold ``T`` on the predicted tumour DSC of ``flag_method``.
        threshold_source: where ``threshold`` came from (written into every report).
        flag_method: which predicted DSC the flag reads (:data:`~synthcp3d.alarm.predictor.METHODS`; default the
            paper's SynthCP + VAE alarm ensemble).
        progress: show a progress bar in :meth:`run_batch`.
        measure_memory: record the peak memory of every stage in ``report.timer`` (for the benchmark).
    """

    def __init__(
        self,
        predictor: Predictor,
        threshold: float = DEFAULT_THRESHOLD,
        threshold_source: str = "default",
        progress: bool = True,
        measure_memory: bool = False,
        flag_method: str = DEFAULT_FLAG_METHOD,
    ) -> None:
        self.predictor = predictor
        self.device = torch.device(getattr(predictor, "device", "cpu"))
        self.measure_memory = measure_memory
        self.threshold = float(threshold)
        self.threshold_source = threshold_source
        self.flag_method = check_flag_method(flag_method)
        self.progress = progress

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        threshold: float | None = None,
        flag_method: str | None = None,
        **kwargs: Any,
    ) -> DSCAlarm:
        """Load a trained pancreas bundle folder.

        Args:
            path: the bundle folder (``configs/``, trained ``models/``).
            device: ``"cuda"``, ``"cpu"`` or None (CUDA when available).
            threshold: overrides the bundle's calibrated threshold (``models/alarm_calibration.json``, written by
                ``synthcp alarm calibrate``); without either, :data:`DEFAULT_THRESHOLD`.
            flag_method: the predicted DSC the flag reads; default: the one the bundle was calibrated for, else
                the ensemble. A calibrated threshold is kept only for its own method.
            kwargs: passed to :class:`DSCAlarm`.

        Raises:
            SynthCPInputError: missing bundle, weights absent, label count differs from the networks', no CUDA.
        """
        method = None if flag_method is None else check_flag_method(flag_method)
        predictor = load_predictor(path, resolve_device(device))
        if threshold is not None:
            value, source = float(threshold), "user"
        else:
            calibration = read_calibration(path)
            if calibration is not None:
                calibrated = calibration.get("flag_method", DEFAULT_FLAG_METHOD)  # older files: the ensemble's
                if method is not None and method != calibrated:
                    raise SynthCPInputError(
                        f"the bundle's threshold was calibrated for flag method {calibrated!r}, not {method!r}: give "
                        f"a threshold, or calibrate with --flag-method {method}"
                    )
                method = calibrated
                value, source = float(calibration["threshold"]), f"calibration ({calibration['path']})"
            else:
                value, source = DEFAULT_THRESHOLD, "default"
        return cls(
            predictor, threshold=value, threshold_source=source, flag_method=method or DEFAULT_FLAG_METHOD, **kwargs
        )

    # ------------------------------------------------------------------ one case
    def __call__(
        self,
        source: VolumeInput,
        case_id: str | None = None,
        mask: str | os.PathLike | tuple[np.ndarray, np.ndarray] | None = None,
        labels: str | dict[str, int] | None = None,
    ) -> AlarmReport:
        """Run the alarm on one volume: a path (NIfTI file or DICOM series folder), ``(array, affine)`` or a CTVolume.

        Args:
            mask: judge this segmentation (a NIfTI label file or ``(array (X, Y, Z), affine)``, on the image's grid
                or another grid of the same field of view and orientation) instead of the bundle segmenter's.
            labels: the mask's value of each class, ``"pancreas=1,tumour=2"`` (the default) or a dict.

        Returns:
            the report with arrays on the input's own grid. Raises :class:`SynthCPInputError` for unusable input.
        """
        timer = StageTimer(self.device, memory=self.measure_memory)
        start = time.perf_counter()
        with timer("load"), _captured_warnings() as messages:
            array, affine, text = _load_volume(source)
            given = self._load_given_mask(mask, labels, affine, array.shape) if mask is not None else None
        if case_id is None:
            case_id = case_name(Path(text)) if text != "<array>" else "array"
        report = AlarmReport(case=case_id, source=text, affine=affine, shape=tuple(array.shape))
        report.spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
        report.warnings.extend(messages)
        report.image = array
        report.model = dict(self.predictor.info.get("model", {}))
        report.bundle = dict(self.predictor.info.get("bundle", {}))
        report.judged = given.describe() if given is not None else {
            "segmentation": "bundle segmenter", "segmenter": report.model.get("name", "")
        }
        if given is not None and given.unclaimed:
            report.warnings.append(
                f"mask values {given.unclaimed} are not mapped to a class by --labels {given.labels}: "
                "read as background"
            )

        with torch.inference_mode():
            with timer("preprocess"):
                working_in = self.predictor.preprocess(as_metatensor(array, affine))
            if given is None:
                prediction = self.predictor(working_in, timer=timer)
            else:
                working = given.on_image_grid(affine_of(working_in), tuple(working_in.shape[1:]), device=self.device)
                prediction = self.predictor(working_in, timer=timer, segmentation=working)
        for stage, value in prediction.seconds.items():
            timer.seconds.setdefault(stage, value)

        with timer("postprocess"):
            if given is None:
                report.segmentation, report.error_probability = self.to_input_grid(
                    prediction, affine, array.shape, device=self.device
                )
            else:  # the judged mask itself, one nearest step from its own grid (not a round trip through the work grid)
                report.segmentation = given.on_image_grid(affine, array.shape, device=self.device)
                report.error_probability = self.error_to_input_grid(prediction, affine, array.shape, device=self.device)

        report.working = prediction
        report.predicted_dsc = {m: dict(v) for m, v in prediction.dsc.items()}
        report.threshold, report.threshold_source = self.threshold, self.threshold_source
        report.flag_method = self.flag_method
        report.flagged = flag_case(report.predicted_dsc, self.threshold, self.flag_method)
        timer.seconds["total"] = time.perf_counter() - start
        report.seconds = {k: timer.seconds[k] for k in (*STAGES, "total") if k in timer.seconds}
        report.timer = timer
        return report

    def _load_given_mask(
        self, mask: Any, labels: str | dict[str, int] | None, image_affine: np.ndarray, image_shape: tuple[int, ...]
    ) -> GivenMask:
        values, mask_affine, text = masks.load_mask(mask)
        masks.check_same_space(mask_affine, values.shape, image_affine, image_shape)
        names = [n for i, n in sorted(self.predictor.labels.items()) if i != 0]
        label_map = masks.parse_label_map(labels, names)
        classes, unclaimed = masks.mask_to_classes(values, label_map, {n: i for i, n in self.predictor.labels.items()})
        return GivenMask(text, label_map, classes, mask_affine, unclaimed)

    @staticmethod
    def to_input_grid(
        prediction: Prediction, affine: np.ndarray, shape: tuple[int, ...], device: torch.device | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Resample the working-grid segmentation (nearest) and error probability (trilinear) onto the input grid,
        on ``device`` (default the CPU).

        Returns:
            segmentation ``(X, Y, Z)`` uint8 and error probability ``(X, Y, Z)`` float32 in [0, 1].
        """
        seg = to_native_grid(np.asarray(prediction.segmentation), prediction.affine, affine, shape, device=device)
        return seg, DSCAlarm.error_to_input_grid(prediction, affine, shape, device=device)

    @staticmethod
    def error_to_input_grid(
        prediction: Prediction, affine: np.ndarray, shape: tuple[int, ...], device: torch.device | None = None
    ) -> np.ndarray:
        """The working-grid error probability resampled (trilinear) onto the input grid, on ``device`` (default the
        CPU): ``(X, Y, Z)`` in [0, 1]."""
        err = resample_to_grid(
            np.asarray(prediction.error_probability, dtype=np.float32),
            prediction.affine,
            affine,
            tuple(shape),
            "bilinear",
            device=device,
        )
        return np.clip(err, 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ batches
    def run_batch(
        self,
        inputs: Iterable[str | os.PathLike | CaseInput] | str | os.PathLike,
        out_dir: str | os.PathLike | None = None,
        keep_arrays: bool | None = None,
        labels: str | dict[str, int] | None = None,
    ) -> Iterator[AlarmReport]:
        """Process many cases, yielding one report per case in order; a failing case yields a report with ``error``.

        Args:
            inputs: paths (files, DICOM folders, folders, CSV lists; see :func:`discover_inputs`) or cases.
            out_dir: when given, each case's outputs are written there (:func:`write_case_outputs`) as it finishes.
            keep_arrays: keep the voxel arrays in the yielded reports (default: only when ``out_dir`` is None, so a
                long batch that writes files does not hold every volume in memory).
            labels: the label mapping of the cases that come with a mask (:meth:`__call__`).
        """
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        items = list(inputs)
        cases = [c for c in items if isinstance(c, CaseInput)]
        if len(cases) != len(items):
            cases = cases + discover_inputs([i for i in items if not isinstance(i, CaseInput)])
        keep = out_dir is None if keep_arrays is None else keep_arrays
        out = check_writable(out_dir) if out_dir is not None else None
        bar = tqdm(cases, desc="DSC alarm", unit="case", disable=not self.progress)
        for case in bar:
            bar.set_postfix_str(case.case_id)
            start = time.perf_counter()
            try:
                report = self(case.path, case_id=case.case_id, mask=case.mask, labels=labels)
                if out is not None:
                    with report.timer("write") if report.timer is not None else contextlib.nullcontext():
                        write_case_outputs(report, out)
            except SynthCPInputError as err:
                report = AlarmReport(case=case.case_id, source=str(case.path), error=str(err))
            except Exception as err:  # noqa: BLE001 - one bad case never stops the others; the reason is reported
                logger.debug("case %s failed", case.case_id, exc_info=True)
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                report = AlarmReport(case=case.case_id, source=str(case.path), error=f"{type(err).__name__}: {first}")
            if not report.ok:
                report.seconds = {"total": time.perf_counter() - start}
                report.threshold, report.threshold_source = self.threshold, self.threshold_source
                report.flag_method = self.flag_method
            if not keep:
                report.segmentation = report.error_probability = report.image = None
                report.working = None
            yield report


def write_case_outputs(report: AlarmReport, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write one case's files into ``out_dir/<case>/``, all or nothing.

    Files: ``segmentation.nii.gz`` (uint8 classes), ``error_probability.nii.gz`` (float32), both on the input's
    grid with its affine; ``report.json``; ``overview.png`` for flagged cases. They are written into a hidden
    temporary folder that is renamed onto ``out_dir/<case>`` at the end, so a crash never leaves a partial case.

    Returns:
        the written paths by kind (also stored in ``report.outputs``).
    """
    start = time.perf_counter()
    out_dir = check_writable(out_dir)
    final = out_dir / report.case
    tmp = Path(tempfile.mkdtemp(prefix=f".{report.case}.", suffix=".tmp", dir=out_dir))
    try:
        outputs = {
            "segmentation": str(final / "segmentation.nii.gz"),
            "error_probability": str(final / "error_probability.nii.gz"),
            "report": str(final / "report.json"),
        }
        save_like(report.segmentation.astype(np.uint8), report.affine, tmp / "segmentation.nii.gz")
        save_like(report.error_probability.astype(np.float32), report.affine, tmp / "error_probability.nii.gz")
        if report.flagged and report.working is not None:
            overview.save_overview(report, tmp / "overview.png")
            outputs["overview"] = str(final / "overview.png")
        report.outputs = outputs
        report.seconds["write"] = time.perf_counter() - start
        report.seconds["total"] = report.seconds.get("total", 0.0) + report.seconds["write"]
        (tmp / "report.json").write_text(report.to_json() + "\n")
        os.chmod(tmp, 0o755)
        _replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        report.outputs = {}
        raise
    return report.outputs


def _replace_folder(src: Path, dst: Path) -> None:
    # A folder cannot be os.replace'd onto a non-empty one: move the old aside first, then drop it.
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
