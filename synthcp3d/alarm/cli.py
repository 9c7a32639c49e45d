"""``synthcp alarm``: predict tumour DSC for new CT volumes and flag the ones to check; ``synthcp alarm calibrate``.

Exit status: 0 every case processed (and, with ``--fail-on-flag``, none flagged); 1 some case failed (each failure
is printed as one ``error:`` line and listed in ``summary.csv``); 2 unusable arguments, bundle or output folder;
3 every case processed but some flagged and ``--fail-on-flag`` given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from synthcp3d.alarm.api import DSCAlarm, output_folder
from synthcp3d.alarm.calibration import calibrate_alarm, load_labelled_cases, write_calibration
from synthcp3d.alarm.inputs import discover_inputs
from synthcp3d.alarm.masks import parse_label_map
from synthcp3d.alarm.predictor import METHODS
from synthcp3d.alarm.report import DEFAULT_FLAG_METHOD, write_summary
from synthcp3d.errors import SynthCPInputError

__all__ = ["add_arguments", "main", "run_alarm", "EXIT_OK", "EXIT_FAILED", "EXIT_FLAGGED"]

EXIT_OK, EXIT_FAILED, EXIT_FLAGGED = 0, 1, 3

EPILOG = """
inputs: .nii/.nii.gz files, DICOM series folders, folders holding either, or CSV lists (column 'image').

judge another model's segmentation: synthcp alarm CT.nii.gz --mask SEG.nii.gz --labels pancreas=1,tumour=2
(or a CSV with columns image,mask). The mask may be on another grid of the same field of view (resampled, nearest);
one that covers another field of view or orientation is refused. The bundle's own segmenter does not run.
Any orientation and spacing; outputs are written on each input's own grid, in OUT/<case>/:
segmentation.nii.gz, error_probability.nii.gz, report.json, overview.png (flagged cases), and OUT/summary.csv.

flag rule: a case is flagged when the predicted tumour DSC of --flag-method is below T, or cannot be computed.
Method: --flag-method, else the one the bundle was calibrated for, else ensemble (mean of SynthCP and the VAE
alarm, the paper's); pairwise_dice and synthcp_pairwise need the bundle's cross-validation fold models.
T: --threshold, else the bundle's calibration (synthcp alarm calibrate, per method), else 0.5.

calibrate: synthcp alarm calibrate --bundle DIR --data DIR --target-dsc 0.5 --max-miss 0.1
chooses T on a held-out labelled set (MSD folder or CSV image,label) so that at most --max-miss of truly bad cases
(true tumour DSC < --target-dsc) go unflagged (class-conditional split-conformal bound) and stores it in the bundle.

exit status: 0 all processed; 1 some case failed; 2 bad arguments/bundle/output folder; 3 flagged with --fail-on-flag.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``synthcp alarm`` (and of ``synthcp alarm calibrate``, selected by the first word)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="volumes, DICOM folders, folders, CSV lists; or 'calibrate'"
    )
    parser.add_argument("--bundle", required=True, help="trained pancreas bundle folder")
    parser.add_argument("--out", default="alarm_output", help="output folder (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=None, help="flag threshold T on the predicted tumour DSC")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    parser.add_argument(
        "--flag-method", choices=METHODS, default=None,
        help="the predicted tumour DSC the flag reads (default: the calibrated one, else ensemble = SynthCP + VAE alarm)",
    )
    parser.add_argument("--fail-on-flag", action="store_true", help="exit 3 when any case is flagged")
    parser.add_argument("--mask", default=None, help="judge this segmentation (NIfTI) of the single INPUT instead")
    parser.add_argument(
        "--labels", default=None, help="the mask's value of each class, e.g. pancreas=1,tumour=2 (the default)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cal = parser.add_argument_group("calibrate")
    cal.add_argument("--data", help="held-out labelled cases: MSD Task07 folder or CSV with image,label")
    cal.add_argument("--target-dsc", type=float, default=0.5, help="truly bad = true tumour DSC below this")
    cal.add_argument("--max-miss", type=float, default=0.1, help="largest share of bad cases left unflagged")
    cal.add_argument("--confidence", type=float, default=0.95, help="level of the Clopper-Pearson intervals")
    cal.add_argument("--dry-run", action="store_true", help="print the calibration without storing it in the bundle")


def main(args: argparse.Namespace) -> int:
    """Run the alarm (or calibration); :class:`SynthCPInputError` propagates to the CLI (one line, exit 2)."""
    if args.inputs and args.inputs[0] == "calibrate":
        if len(args.inputs) > 1:
            raise SynthCPInputError(f"'calibrate' takes no input paths (got {' '.join(args.inputs[1:])}): use --data")
        return _calibrate(args)
    return _alarm(args)


def _alarm(args: argparse.Namespace) -> int:
    return run_alarm(
        args.inputs,
        args.bundle,
        args.out,
        threshold=args.threshold,
        device=args.device,
        fail_on_flag=args.fail_on_flag,
        progress=not args.no_progress,
        mask=args.mask,
        labels=args.labels,
        flag_method=args.flag_method,
    )


def run_alarm(
    inputs: Sequence[str | os.PathLike],
    bundle: str | os.PathLike,
    out: str | os.PathLike = "alarm_output",
    threshold: float | None = None,
    device: str | None = None,
    fail_on_flag: bool = False,
    progress: bool = True,
    mask: str | os.PathLike | None = None,
    labels: str | None = None,
    flag_method: str | None = None,
) -> int:
    """The body of ``synthcp alarm`` (also callable from a bundle config): returns the exit status.

    Writes ``out/<case>/...`` per case and ``out/summary.csv`` (rewritten atomically after every case, so it is
    always complete so far); prints one ``error:`` line per failed case. ``mask``: a segmentation of the single
    input to judge (CSV lists give one per case in a ``mask`` column); ``labels``: its value of each class;
    ``flag_method``: the predicted DSC the flag reads (see `DSCAlarm.from_bundle`).
    """
    cases = discover_inputs(list(inputs))
    if mask is not None:
        if len(cases) != 1:
            raise SynthCPInputError(f"--mask goes with exactly one input (got {len(cases)} cases): list pairs in a CSV "
                                    "with columns image,mask")
        cases = [dataclasses.replace(cases[0], mask=Path(mask).expanduser())]
    if labels is not None:
        parse_label_map(labels)  # refuse a bad --labels before loading the bundle
    with output_folder(out) as out:
        reports = _alarm_cases(cases, bundle, out, threshold, device, progress, labels, flag_method)
    summary = out / "summary.csv"
    failed = sum(not r.ok for r in reports)
    flagged = sum(bool(r.flagged) for r in reports if r.ok)
    print(
        f"processed {len(reports) - failed}/{len(reports)} case(s): {flagged} flagged, {failed} failed; "
        f"summary: {summary}"
    )
    if failed:
        return EXIT_FAILED
    if fail_on_flag and flagged:
        return EXIT_FLAGGED
    return EXIT_OK


def _alarm_cases(
    cases: list, bundle: str | os.PathLike, out: Path, threshold: float | None, device: str | None, progress: bool,
    labels: str | None, flag_method: str | None,
) -> list:
    """Load the bundle's alarm and judge every case into ``out`` (``summary.csv`` rewritten after each): the reports."""
    alarm = DSCAlarm.from_bundle(bundle, device=device, threshold=threshold, progress=progress, flag_method=flag_method)
    print(
        f"DSC alarm: {len(cases)} case(s), flag on {alarm.flag_method} < {alarm.threshold:.4f} "
        f"({alarm.threshold_source}), writing to {out}"
    )
    reports = []
    summary = out / "summary.csv"
    for report in alarm.run_batch(cases, out_dir=out, labels=labels):
        reports.append(report)
        write_summary(reports, summary)
        if not report.ok:
            print(f"error: {report.case}: {report.error}", file=sys.stderr)
        for warning in report.warnings:
            print(f"warning: {report.case}: {warning}", file=sys.stderr)
    return reports


def _calibrate(args: argparse.Namespace) -> int:
    if not args.data:
        raise SynthCPInputError("'synthcp alarm calibrate' needs --data: a held-out labelled MSD folder or CSV")
    cases = load_labelled_cases(args.data)
    # The alarm's own threshold is irrelevant here: calibration only uses the predicted DSCs.
    alarm = DSCAlarm.from_bundle(
        args.bundle, device=args.device, threshold=0.5, progress=not args.no_progress,
        flag_method=args.flag_method or DEFAULT_FLAG_METHOD,
    )
    result = calibrate_alarm(alarm, cases, args.target_dsc, args.max_miss, args.confidence)
    print(result.summary())
    if args.dry_run:
        print("dry run: the bundle was not changed")
        return EXIT_OK
    path = write_calibration(
        result,
        args.bundle,
        extra={"data": str(Path(args.data).resolve()), "bundle": alarm.predictor.info.get("bundle", {}),
               "flag_method": alarm.flag_method},
    )
    print(f"stored the threshold in {path}")
    return EXIT_OK
