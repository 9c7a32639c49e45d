"""The synthesizer's simplest replacement and the measure it is judged by (any ``spatial_dims``).

- :class:`ClassMeanPainter`: paints every label with its training mean intensity plus Gaussian noise of the
  class's training standard deviation. No learning beyond two numbers per class per channel: whatever ``G`` adds
  over it is what SPADE learned. It also stands in for ``x̂`` in the comparator ablation ("does F use x̂?").
- :func:`synthesis_quality`: a synthesized image against the real one, per class: the error of the class's mean
  intensity (does the synthesis get the tissue right?), the voxel-wise mean absolute error, and SSIM over the
  whole crop (MONAI ``SSIMMetric``).

Images are in the study's normalised units; ``scale`` converts errors to physical units (e.g. HU per unit).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import SSIMMetric

from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.atomic import atomic_save_json

__all__ = [
    "ClassMeanPainter", "PAINTER_NAME", "synthesis_quality", "blank_like", "X_HAT_ABLATIONS", "replaced_syntheses",
]

#: the painter's name in the synthesis-quality tables: the reference every synthesizer is compared with
PAINTER_NAME = "class-mean painter"


class ClassMeanPainter:
    """Label map -> image: each class its training mean plus noise of its training SD.

    Args:
        num_classes: ``C``.
        image_channels: channels of the image.
    """

    def __init__(self, num_classes: int, image_channels: int = 1) -> None:
        self.num_classes, self.image_channels = int(num_classes), int(image_channels)
        self.mean = np.zeros((self.num_classes, self.image_channels))
        self.std = np.zeros((self.num_classes, self.image_channels))
        self.count = np.zeros(self.num_classes, dtype=np.int64)

    def fit(self, pairs: Iterable[tuple[Any, Any]]) -> ClassMeanPainter:
        """Accumulate ``(image (Ci, *S), label (*S) or (1, *S))`` pairs; a class never seen keeps the overall mean."""
        total = np.zeros((self.num_classes, self.image_channels))
        total_sq = np.zeros((self.num_classes, self.image_channels))
        for image, label in pairs:
            image = np.asarray(torch.as_tensor(image).detach().cpu(), dtype=np.float64)
            label = np.asarray(torch.as_tensor(label).detach().cpu()).astype(np.int64)
            label = label.reshape(image.shape[1:])
            for c in range(self.num_classes):
                voxels = image[:, label == c]
                total[c] += voxels.sum(1)
                total_sq[c] += (voxels**2).sum(1)
                self.count[c] += voxels.shape[1]
        if self.count.sum() == 0:
            raise SynthCPInputError("the class-mean painter saw no voxel: give at least one (image, label) pair")
        overall = total.sum(0) / self.count.sum()
        for c in range(self.num_classes):
            if self.count[c]:
                self.mean[c] = total[c] / self.count[c]
                self.std[c] = np.sqrt(np.maximum(total_sq[c] / self.count[c] - self.mean[c] ** 2, 0.0))
            else:
                self.mean[c] = overall
        return self

    @property
    def overall_mean(self) -> np.ndarray:
        """The training mean over every labelled voxel ``(Ci,)`` (what an ignore-label voxel is painted with)."""
        total = max(int(self.count.sum()), 1)
        return (self.mean * self.count[:, None]).sum(0) / total

    def __call__(
        self, label: torch.Tensor, seed: int = 0, noise: bool = True, ignore_index: int | None = None
    ) -> torch.Tensor:
        """Paint label maps ``(B, *S)`` or ``(B, 1, *S)`` -> images ``(B, Ci, *S)`` (float32, same device).

        The noise comes from a generator seeded with ``seed``: the same label map paints the same image. Voxels
        labelled ``ignore_index`` (no class: the synthesizer sees an all-zero one-hot vector there) are painted with
        the overall training mean, without noise.
        """
        if label.ndim >= 2 and label.shape[1] == 1:
            label = label[:, 0]
        label = label.long()
        index = label.clamp(0, self.num_classes - 1)
        if ignore_index is not None:
            index = torch.where(label == int(ignore_index), self.num_classes, index)
        mean = np.concatenate([self.mean, self.overall_mean[None]])
        std = np.concatenate([self.std, np.zeros((1, self.image_channels))])
        image = torch.as_tensor(mean, dtype=torch.float32, device=label.device)[index].movedim(-1, 1).contiguous()
        if noise:
            gen = torch.Generator().manual_seed(int(seed))
            sd = torch.as_tensor(std, dtype=torch.float32, device=label.device)[index].movedim(-1, 1)
            image = image + sd * torch.randn(image.shape, generator=gen).to(label.device)
        return image

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "class_mean_painter", "num_classes": self.num_classes, "image_channels": self.image_channels,
                "mean": self.mean.tolist(), "std": self.std.tolist(), "count": self.count.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ClassMeanPainter:
        painter = cls(int(state["num_classes"]), int(state["image_channels"]))
        painter.mean = np.asarray(state["mean"], dtype=np.float64).reshape(painter.num_classes, painter.image_channels)
        painter.std = np.asarray(state["std"], dtype=np.float64).reshape(painter.num_classes, painter.image_channels)
        painter.count = np.asarray(state["count"], dtype=np.int64)
        return painter

    def save(self, path: str | Path) -> Path:
        """Write the state as JSON, atomically (a study's ``models/painter.json``)."""
        return atomic_save_json(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> ClassMeanPainter:
        """Read a painter written by :meth:`save`; a missing or unreadable file is a one-line `SynthCPInputError`."""
        path = Path(path)
        if not path.is_file():
            raise SynthCPInputError(f"painter {path} is missing: run the train_synthesizer stage first")
        try:
            return cls.from_state_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SynthCPInputError(f"painter {path} is unreadable ({err})") from None


def blank_like(image: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """The "no synthesis" input of the ablation: a constant image of ``image``'s shape (0 = mid-window)."""
    return torch.full_like(image, float(value))


#: SynthCP with another x̂ than G(ŷ) (suffixes of a SynthCP row's name): does the comparison use the synthesis?
X_HAT_ABLATIONS = (", x̂ = class-mean painter", ", x̂ = blank")


def replaced_syntheses(
    painter: ClassMeanPainter, pred: torch.Tensor, synthesis: torch.Tensor, seed: int
) -> dict[str, torch.Tensor]:
    """The x̂ ablation's inputs for a prediction ``(B, *S)``: row-name suffix (:data:`X_HAT_ABLATIONS`) -> the
    painter's image of ``ŷ`` and a blank image (`blank_like`), each shaped as ``synthesis`` = ``G(ŷ)``
    ``(B, Cimg, *S)``, in its place."""
    painted = painter(pred, seed=seed).to(synthesis.device)
    return dict(zip(X_HAT_ABLATIONS, (painted, blank_like(synthesis))))


def synthesis_quality(
    synthesized: torch.Tensor,
    real: torch.Tensor,
    label: torch.Tensor,
    class_names: Sequence[str],
    scale: float = 1.0,
    data_range: float = 2.0,
) -> dict[str, float]:
    """Compare one synthesized image with the real one, per class of the ground-truth ``label``.

    Args:
        synthesized, real: ``(Ci, *S)`` in the same normalised units.
        label: ``(*S)`` or ``(1, *S)`` ground truth (the synthesis' condition).
        class_names: ``C`` names; a class absent from ``label`` gets NaN.
        scale: physical units per normalised unit (e.g. 170 HU for a [-100, 240] HU window mapped to [-1, 1]).
        data_range: the intensity range of the normalised units, for SSIM.

    Returns:
        ``{"mean_error/<class>": |mean(x̂) - mean(x)| over the class's voxels · scale, "mae/<class>": mean |x̂ - x|
        over them · scale, "ssim": SSIM of the whole image}``.
    """
    if synthesized.shape != real.shape:
        raise SynthCPInputError(f"synthesized {tuple(synthesized.shape)} and real {tuple(real.shape)} differ in shape")
    synthesized, real = synthesized.float().cpu(), real.float().cpu()
    label = label.reshape(real.shape[1:]).long().cpu()
    out: dict[str, float] = {}
    for c, name in enumerate(class_names):
        inside = label == c
        if not bool(inside.any()):
            out[f"mean_error/{name}"] = out[f"mae/{name}"] = float("nan")
            continue
        s, r = synthesized[:, inside], real[:, inside]
        out[f"mean_error/{name}"] = float((s.mean(1) - r.mean(1)).abs().mean()) * scale
        out[f"mae/{name}"] = float((s - r).abs().mean()) * scale
    spatial_dims = real.ndim - 1
    win = min(7, *real.shape[1:])
    win -= 1 - win % 2  # an odd window that fits
    ssim = SSIMMetric(spatial_dims=spatial_dims, data_range=data_range, win_size=win)
    out["ssim"] = float(ssim(synthesized[None], real[None]).mean())
    return out
