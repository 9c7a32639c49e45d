"""Figures and tables of the 2D studies: the Fig. 5 / Fig. 7-style panels and the pixel-metric tables.

The image-level (quality) table comes from the study-agnostic ``synthcp3d.report.quality_report``; the pixel and
anomaly tables (methods x metric keys) are formatted here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from synthcp3d.report import markdown_table
from synthcp3d.utils.atomic import atomic_path

__all__ = ["Panel", "panel_figure", "metrics_markdown", "to_display_image"]

#: (image, title, matplotlib colormap or None for RGB, (vmin, vmax) or None[, outline mask (H, W) or None]): the
#: optional outline (e.g. the true anomaly) is drawn as a cyan contour over the image
Panel = tuple  # (np.ndarray, str, str | None, tuple[float, float] | None[, np.ndarray | None])


def to_display_image(image: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` in [-1, 1] (or uint8) -> ``(H, W, 3)`` float in [0, 1] for ``imshow``."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.transpose(1, 2, 0) / 255.0
    return np.clip((image.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)


def panel_figure(
    rows: Sequence[Sequence[Panel]], path: str | Path, title: str | None = None, cell: float = 4.0
) -> Path:
    """Grid of panels (one row per example), each ``cell`` inches wide, saved atomically as PNG; returns the path."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    aspect = rows[0][0][0].shape[1] / rows[0][0][0].shape[0]
    fig = Figure(figsize=(cell * n_cols, cell * n_rows / aspect + 0.4))  # no pyplot: no global backend
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            image, name, cmap, vrange = row[c][:4]
            outline = row[c][4] if len(row[c]) > 4 else None
            kwargs = {"interpolation": "nearest"}
            if cmap is not None:
                kwargs["cmap"] = cmap
                if vrange is not None:
                    kwargs["vmin"], kwargs["vmax"] = vrange
            ax.imshow(image, **kwargs)
            if outline is not None and np.any(outline):
                ax.contour(np.asarray(outline, dtype=np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
            if r == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def pooled_ranking_note(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """How exactly the pooled rows ranked their pixels (``precision_bits`` of the streaming metrics, 23 = exact)."""
    rounded = {m: r["precision_bits"] for m, r in rows.items() if r.get("precision_bits", 23) < 23}
    if not rounded:
        return "exact ranking of the float32 scores"
    listed = ", ".join(f"{m} {bits}" for m, bits in rounded.items())
    return f"exact float32 ranking except scores rounded to fewer mantissa bits to fit the count table: {listed}"


def metrics_markdown(rows: Mapping[str, Mapping[str, float]], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table: one row per method, ``columns`` = (metric key, header); two decimals, ``n/a`` if undefined."""
    return markdown_table(rows, columns, first="method")
