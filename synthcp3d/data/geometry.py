"""Move arrays between the user's voxel grid and the model's working grid, by their affines.

The bundle's preprocessing (Orientation RAS, Spacing, an optional crop) produces a ``MetaTensor`` whose affine says
where every working voxel lies in world (RAS mm) space. Mapping an output back is therefore one resampling from
the working affine onto the input affine and shape (MONAI ``SpatialResample``), whatever the preprocessing did:
this also covers crops and oblique inputs, which inverting the transform list one by one would have to special-case.
Voxels outside the working grid get 0 (background, no error).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

__all__ = ["as_metatensor", "affine_of", "resample_to_grid"]


def as_metatensor(array: np.ndarray | torch.Tensor, affine: np.ndarray | torch.Tensor) -> MetaTensor:
    """Wrap a volume ``(X, Y, Z)`` as a channel-first ``MetaTensor`` ``(1, X, Y, Z)`` carrying its 4x4 affine."""
    data = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if data.ndim == 3:
        data = data[None]
    return MetaTensor(data, affine=torch.as_tensor(np.asarray(affine, dtype=np.float64)))


def affine_of(data: torch.Tensor, default: np.ndarray | None = None) -> np.ndarray:
    """The 4x4 affine of a ``MetaTensor`` (float64 numpy), or ``default`` for a plain tensor."""
    if isinstance(data, MetaTensor):
        return np.asarray(data.affine.detach().cpu().numpy(), dtype=np.float64)
    if default is None:
        raise ValueError("a plain tensor has no affine: pass a MetaTensor or a default affine")
    return np.asarray(default, dtype=np.float64)


def resample_to_grid(
    data: np.ndarray | torch.Tensor,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    spatial_size: tuple[int, int, int],
    mode: str = "nearest",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Resample a volume from the grid of ``src_affine`` onto the grid ``(dst_affine, spatial_size)``.

    Args:
        data: ``(X, Y, Z)`` or channel-first ``(C, X, Y, Z)`` values on the source grid.
        src_affine: 4x4 voxel-to-world affine of ``data``.
        dst_affine: 4x4 voxel-to-world affine of the destination grid.
        spatial_size: destination shape ``(X', Y', Z')``.
        mode: ``"nearest"`` for label maps, ``"bilinear"`` (trilinear in 3D) for probabilities and intensities.
        device: where the resampling runs (default the CPU). At 512x512x100 the CPU's grid construction and
            sampling took longer than the alarm's whole segmentation on an H200
            (``benchmarks/results/2026-11-30-h200.md``); on the GPU it is not measured yet.

    Returns:
        numpy array ``(X', Y', Z')`` (or ``(C, X', Y', Z')``), float32; zero outside the source grid.
    """
    tensor = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
    tensor = tensor.detach().to(device or "cpu")
    squeeze = tensor.ndim == 3
    if squeeze:
        tensor = tensor[None]
    src = MetaTensor(tensor.float(), affine=torch.as_tensor(np.asarray(src_affine, dtype=np.float64)))
    if np.allclose(src_affine, dst_affine, atol=1e-6) and tuple(tensor.shape[1:]) == tuple(spatial_size):
        out = src.as_tensor()
    else:
        resampler = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float32)
        out = resampler(
            src, dst_affine=torch.as_tensor(np.asarray(dst_affine, dtype=np.float64)), spatial_size=spatial_size
        )
    out_np = np.asarray(out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out, dtype=np.float32)
    return out_np[0] if squeeze else out_np
