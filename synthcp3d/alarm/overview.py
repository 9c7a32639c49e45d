"""PNG overview of a flagged case: axial slices through the tumour, four panels per slice.

Columns: the image, the segmentation over it (pancreas green, tumour red), the image synthesized from the
segmentation, the error probability. Drawn on the predictor's working grid, which is RAS-oriented, so axial slices
are the last axis whatever the input's orientation.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import pyplot as plt
from matplotlib.colors import ListedColormap

from synthcp3d.alarm.report import AlarmReport
from synthcp3d.utils.atomic import atomic_path

__all__ = ["axial_slices", "save_overview"]


def axial_slices(segmentation: np.ndarray, error: np.ndarray, count: int = 3, tumour_label: int = 2) -> list[int]:
    """Pick up to ``count`` axial (last-axis) slice indices through the tumour.

    The slices are spread over the tumour's axial extent; without a predicted tumour, over the pancreas
    (label > 0); with neither, the slices with the largest total error probability.

    Args:
        segmentation: ``(X, Y, Z)`` class indices.
        error: ``(X, Y, Z)`` error probability.
    """
    for mask in (segmentation == tumour_label, segmentation > 0):
        z = np.flatnonzero(mask.any(axis=(0, 1)))
        if z.size:
            picks = np.quantile(z, np.linspace(0.0, 1.0, count + 2)[1:-1]) if z.size > 1 else z
            return sorted({int(round(float(p))) for p in np.atleast_1d(picks)})
    totals = error.sum(axis=(0, 1))
    return sorted(int(i) for i in np.argsort(totals)[::-1][:count])


def save_overview(report: AlarmReport, path: str | os.PathLike, count: int = 3) -> Path:
    """Write the overview PNG of ``report`` (which must hold its working-grid prediction) atomically."""
    matplotlib.use("Agg")

    pred = report.working
    if pred is None:
        raise ValueError("the report holds no working-grid prediction to draw")
    seg = np.asarray(pred.segmentation)
    err = np.asarray(pred.error_probability, dtype=np.float32)
    img = np.asarray(pred.image, dtype=np.float32)
    syn = None if pred.synthesized is None else np.asarray(pred.synthesized, dtype=np.float32)
    zs = axial_slices(seg, err, count)
    # the display window from every 8th voxel (each 2nd along each axis): on a 1 mm abdomen (40 M voxels) the
    # whole volume's percentiles took 1.4 s of this picture's 2.2 s on the CPU, for the same window to ~0.001
    lo, hi = (float(v) for v in np.percentile(img[::2, ::2, ::2], [1, 99]))
    labels = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.45), (0.95, 0.1, 0.1, 0.6)])
    titles = ["image", "segmentation", "synthesized", "error probability"]

    fig, axes = plt.subplots(len(zs), 4, figsize=(12, 3.1 * len(zs)), squeeze=False)
    for row, z in enumerate(zs):
        # RAS voxel axes (+x towards the patient's right, +y anterior): radiological display puts anterior at the top
        # and the patient's right on the viewer's left, i.e. rows = descending y, columns = descending x.
        show = lambda a: a[::-1, ::-1, z].T  # noqa: E731
        panels = [
            (show(img), dict(cmap="gray", vmin=lo, vmax=hi)),
            (show(img), dict(cmap="gray", vmin=lo, vmax=hi)),
            (show(syn) if syn is not None else np.zeros_like(show(img)), dict(cmap="gray", vmin=lo, vmax=hi)),
            (show(err), dict(cmap="magma", vmin=0.0, vmax=1.0)),
        ]
        for col, (data, kwargs) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(data, interpolation="nearest", **kwargs)
            if col == 1:
                ax.imshow(show(np.clip(seg, 0, 2)), cmap=labels, vmin=0, vmax=2, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{titles[col]} (z={z})" if col == 0 else titles[col], fontsize=9)
    tumour = report.predicted_dsc.get(report.flag_method, {}).get("tumour")
    tumour_text = "n/a" if tumour is None else f"{tumour:.2f}"
    fig.suptitle(
        f"{report.case}: predicted tumour DSC ({report.flag_method}) {tumour_text} < threshold {report.threshold:.2f} "
        "-> check this case",
        fontsize=11,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return Path(path)
