"""MSP+CRF baseline: maximum softmax of dense-CRF-refined probabilities (Krähenbühl & Koltun, NeurIPS 2011).

Model: unary ``-log p`` (p clipped at 1e-5, as ``pydensecrf.utils.unary_from_softmax``), Potts pairwise terms
with two kernels — a smoothness kernel ``exp(-|Δpos|² / 2 sxy_s²)`` and an appearance (bilateral) kernel
``exp(-|Δpos|² / 2 sxy_b² - |Δf|² / 2 schan²)`` on the image features ``f`` — and ``iterations`` mean-field
updates ``Q <- softmax(log p + w_s K_s Q + w_b K_b Q)``. The score is ``1 - max_c Q_c``.

Two backends:

- ``"torch"`` (default; any device; dimension-generic although 2D is what it is meant for, a 3D window costs
  ``(2r+1)³`` shifts): our implementation. The smoothness kernel is exact up to truncation at 4 sigma (a separable
  Gaussian filter, ``monai.networks.layers.separable_filtering``). The bilateral kernel is **approximated** on a
  sparse local window evaluated at full resolution with the exact feature differences: per axis, ``r`` offsets
  per side geometrically spaced from 1 to ``2 sxy_b`` pixels (dense near the pixel, sparse far away), each
  weighted by the area of the cell it stands for. Pixels beyond ±2 sxy_b are dropped and those between samples
  are represented by the samples (a thin structure between two samples is missed), in the spirit of ConvCRF
  (Teichmann & Cipolla 2018). Both kernels exclude the pixel itself and are row-normalised (each message is a
  weighted average of the other pixels' beliefs), close to pydensecrf's default symmetric normalisation, so the
  ``compat`` weights mean about the same in both backends (compared with pydensecrf in
  ``tests/test_scoring_crf.py``). Cost per iteration ≈ ``(2r+1)^dims · C · pixels``: a GPU job at street-scene
  sizes; on CPU prefer ``"pydensecrf"``.
- ``"pydensecrf"``: the permutohedral-lattice implementation of ``pydensecrf`` (``pip install pydensecrf2``, which
  builds from source with a C++ compiler; not a dependency). CPU and numpy, image by image.

MONAI's ``monai.networks.blocks.CRF`` would be the natural choice but needs the compiled ``monai._C`` extension,
which the PyPI wheel lacks.

Appearance features: ``image`` in its own units; the default ``bilateral_schan=0.1`` suits images normalised to
[-1, 1] (≈ pydensecrf's example ``srgb=13`` on 0–255). With ``image=None`` the softmax itself is the appearance
feature, as in the StreetHazards benchmark's "crf" baseline (Hendrycks et al., ``eval_ood.py``: bilateral
``sxy=10, schan=13, compat=10`` on the probabilities, 100 iterations).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from monai.networks.layers import separable_filtering

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring.base import ScoreOutput, check_class_tensor, register_scorer

__all__ = ["dense_crf_probs", "msp_crf_score"]

_UNARY_CLIP = 1e-5


def _gaussian_message(q: torch.Tensor, sxy: float) -> torch.Tensor:
    """Row-normalised Gaussian-weighted mean of the other pixels' ``q`` (``(B, C, *S)``), zero outside the image."""
    radius = max(1, math.ceil(4.0 * sxy))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=q.device)
    kernel = torch.exp(-(offsets**2) / (2.0 * sxy**2))  # centre weight 1: the self term is then exactly 1
    ones = torch.ones_like(q[:, :1])
    total = separable_filtering(torch.cat([q, ones], dim=1), [kernel] * (q.ndim - 2))
    numerator, denominator = total[:, :-1] - q, total[:, -1:] - 1.0
    return numerator / denominator.clamp_min(1e-12)


def _window_offsets(sxy: float, radius: int) -> tuple[list[int], list[float]]:
    """Per-axis sample offsets of the bilateral window and the width of the cell each one stands for.

    ``radius`` offsets per side, geometrically spaced from 1 to ``2 sxy`` pixels (dense near the pixel, sparse far
    away; duplicates after rounding dropped), mirrored, with 0. The widths turn the sum over samples into an
    approximation of the sum over all pixels of the window.
    """
    reach = max(1.0, 2.0 * sxy)
    side = sorted({max(1, round(v)) for v in np.geomspace(1.0, reach, radius)})
    offsets = [-o for o in reversed(side)] + [0] + side
    widths = []
    for i, offset in enumerate(offsets):
        left = offsets[i - 1] if i > 0 else 2 * offset - offsets[i + 1]
        right = offsets[i + 1] if i + 1 < len(offsets) else 2 * offset - offsets[i - 1]
        widths.append((right - left) / 2.0)
    return offsets, widths


# Caching the window weights across mean-field iterations saves recomputing them (the dominant cost) but holds
# (2r+1)^dims maps of the image size; above this many elements they are recomputed every iteration instead.
_MAX_CACHED_WEIGHT_ELEMENTS = 2**28


def _bilateral_terms(
    features: torch.Tensor, sxy: float, schan: float, radius: int
) -> Iterator[tuple[tuple[slice, ...], torch.Tensor]]:
    """Yield, per window offset, the slice of a padded map holding the neighbours and their weights ``(B,1,*S)``."""
    spatial = features.shape[2:]
    offsets, widths = _window_offsets(sxy, radius)
    pad = offsets[-1]
    padding = [pad] * (2 * len(spatial))
    ones = torch.ones_like(features[:, :1])
    f_pad = torch.nn.functional.pad(torch.cat([features, ones], dim=1), padding)  # last channel: inside the image
    for index in itertools.product(range(len(offsets)), repeat=len(spatial)):
        offset = [offsets[i] for i in index]
        if not any(offset):
            continue
        window = (slice(None), slice(None)) + tuple(
            slice(pad + o, pad + o + n) for o, n in zip(offset, spatial, strict=True)
        )
        f_shift = f_pad[window]
        log_area = sum(math.log(widths[i]) for i in index)
        spatial_term = sum(o**2 for o in offset) / (2.0 * sxy**2)
        distance = ((features - f_shift[:, :-1]) ** 2).sum(1, keepdim=True)
        yield window, torch.exp(log_area - spatial_term - distance / (2.0 * schan**2)) * f_shift[:, -1:]


def _bilateral_message(
    q: torch.Tensor, terms: Iterable[tuple[tuple[slice, ...], torch.Tensor]], pad: int
) -> torch.Tensor:
    """Row-normalised bilateral-weighted mean of the other pixels' ``q`` over the sparse local window."""
    numerator = torch.zeros_like(q)
    denominator = torch.zeros_like(q[:, :1])
    q_pad = torch.nn.functional.pad(q, [pad] * (2 * (q.ndim - 2)))
    for window, weight in terms:
        numerator.addcmul_(weight, q_pad[window])
        denominator += weight
    return numerator / denominator.clamp_min(1e-12)


@dataclass(frozen=True)
class _Kernels:
    """The pairwise model: Potts weights and standard deviations of the two kernels (see `dense_crf_probs`)."""

    smooth_sxy: float
    smooth_compat: float
    bilateral_sxy: float
    bilateral_schan: float
    bilateral_compat: float
    bilateral_radius: int


def _dense_crf_torch(image: torch.Tensor, probs: torch.Tensor, iterations: int, k: _Kernels) -> torch.Tensor:
    log_p = probs.clamp(_UNARY_CLIP, 1.0).log()
    q = torch.softmax(log_p, dim=1)
    offsets = _window_offsets(k.bilateral_sxy, k.bilateral_radius)[0]
    pad = offsets[-1]
    small = (len(offsets) ** (probs.ndim - 2) - 1) * image[:, :1].numel() <= _MAX_CACHED_WEIGHT_ELEMENTS

    def bilateral_terms() -> Iterator[tuple[tuple[slice, ...], torch.Tensor]]:
        return _bilateral_terms(image, k.bilateral_sxy, k.bilateral_schan, k.bilateral_radius)

    cached = list(bilateral_terms()) if k.bilateral_compat and iterations > 1 and small else None
    for _ in range(iterations):
        logits = log_p.clone()
        if k.smooth_compat:
            logits += k.smooth_compat * _gaussian_message(q, k.smooth_sxy)
        if k.bilateral_compat:
            logits += k.bilateral_compat * _bilateral_message(q, cached or bilateral_terms(), pad)
        q = torch.softmax(logits, dim=1)
    return q


def _dense_crf_pydensecrf(image: torch.Tensor, probs: torch.Tensor, iterations: int, k: _Kernels) -> torch.Tensor:
    try:  # kept local: pydensecrf is an optional dependency (not in pyproject's dependencies)
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import create_pairwise_bilateral, create_pairwise_gaussian
    except ImportError as error:
        raise SynthCPInputError("backend 'pydensecrf' needs the pydensecrf package: pip install pydensecrf2") from error
    num_classes, spatial = probs.shape[1], tuple(probs.shape[2:])
    dims = len(spatial)
    out = []
    for p, f in zip(probs.detach().cpu().numpy(), image.detach().cpu().float().numpy(), strict=True):
        crf = dcrf.DenseCRF(int(np.prod(spatial)), num_classes)
        unary = -np.log(np.clip(p, _UNARY_CLIP, 1.0)).reshape(num_classes, -1)
        crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
        if k.smooth_compat:
            smooth = create_pairwise_gaussian((k.smooth_sxy,) * dims, spatial)
            crf.addPairwiseEnergy(smooth, compat=float(k.smooth_compat))
        if k.bilateral_compat:
            feats = create_pairwise_bilateral((k.bilateral_sxy,) * dims, k.bilateral_schan, f, chdim=0)
            crf.addPairwiseEnergy(np.ascontiguousarray(feats), compat=float(k.bilateral_compat))
        q = np.array(crf.inference(iterations), dtype=np.float32).reshape(num_classes, *spatial)
        out.append(torch.from_numpy(q))
    return torch.stack(out).to(probs.device)


def dense_crf_probs(
    image: torch.Tensor | None,
    probs: torch.Tensor,
    iterations: int = 5,
    smooth_sxy: float = 3.0,
    smooth_compat: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_schan: float = 0.1,
    bilateral_compat: float = 10.0,
    bilateral_radius: int = 6,
    backend: Literal["torch", "pydensecrf"] = "torch",
) -> torch.Tensor:
    """Mean-field dense-CRF refinement of a softmax (see the module docstring for the model and approximation).

    Args:
        image: appearance features ``(B, F, H, W)`` (e.g. the RGB image), or ``None`` to use ``probs``.
        probs: softmax ``(B, C, H, W)`` (any spatial size; 3D works with the torch backend but is costly).
        iterations: mean-field iterations.
        smooth_sxy: spatial std (pixels) of the smoothness kernel.
        smooth_compat: its Potts weight (0 disables it).
        bilateral_sxy: spatial std (pixels) of the appearance kernel.
        bilateral_schan: feature std of the appearance kernel, in the units of ``image``.
        bilateral_compat: its Potts weight (0 disables it).
        bilateral_radius: samples per side and axis of the torch backend's window (``(2r+1)^dims - 1`` neighbours).
        backend: ``"torch"`` (default) or ``"pydensecrf"``.

    Returns:
        refined probabilities ``(B, C, H, W)`` (float32, on the device of ``probs``).
    """
    check_class_tensor(probs, "probs", min_ndim=3)
    features = probs if image is None else image
    check_class_tensor(features, "image", min_ndim=3)
    if features.shape[0] != probs.shape[0] or features.shape[2:] != probs.shape[2:]:
        raise SynthCPInputError(
            f"image shape {tuple(features.shape)} does not match probs {tuple(probs.shape)} in batch/spatial size"
        )
    if iterations < 0 or bilateral_radius < 1 or min(smooth_sxy, bilateral_sxy, bilateral_schan) <= 0:
        raise SynthCPInputError("CRF iterations must be >= 0, the radius >= 1, and every std positive")
    backends = {"torch": _dense_crf_torch, "pydensecrf": _dense_crf_pydensecrf}
    if backend not in backends:
        raise SynthCPInputError(f"unknown CRF backend {backend!r}; use 'torch' or 'pydensecrf'")
    kernels = _Kernels(smooth_sxy, smooth_compat, bilateral_sxy, bilateral_schan, bilateral_compat, bilateral_radius)
    return backends[backend](features.float(), probs.float(), iterations, kernels)


def msp_crf_score(
    probs: torch.Tensor, image: torch.Tensor | None = None, **crf_kwargs: float | int | str
) -> torch.Tensor:
    """MSP+CRF score ``1 - max_c Q_c`` ``(B, *S)`` with ``Q = dense_crf_probs(image, probs, **crf_kwargs)``."""
    return 1.0 - dense_crf_probs(image, probs, **crf_kwargs).amax(dim=1)  # type: ignore[arg-type]


@register_scorer(
    "msp_crf",
    inputs=("probs",),
    optional=("image",),
    description="1 - maximum of dense-CRF-refined softmax",
)
def _msp_crf(probs: torch.Tensor, image: torch.Tensor | None = None, **crf_kwargs: float | int | str) -> ScoreOutput:
    score = msp_crf_score(probs, image, **crf_kwargs)
    return ScoreOutput(pixel_error=score, anomaly=score)
