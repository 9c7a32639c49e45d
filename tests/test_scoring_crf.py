from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import needs_cuda

from synthcp3d.errors import SynthCPInputError
from synthcp3d.scoring import dense_crf_probs, msp_crf_score, msp_score, run_scorer

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

HAS_PYDENSECRF = importlib.util.find_spec("pydensecrf") is not None
BACKENDS = ["torch", pytest.param("pydensecrf", marks=pytest.mark.skipif(not HAS_PYDENSECRF, reason="no pydensecrf"))]
SMALL = {"bilateral_sxy": 6.0, "bilateral_radius": 3}  # keeps the torch window tiny on CPU


def two_region_scene(height: int = 12, width: int = 16, num_classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (1, 3, H, W) with two flat colour regions and a confident softmax (0.9) that matches them."""
    label = torch.zeros(1, height, width, dtype=torch.long)
    label[:, :, width // 2 :] = 1
    image = torch.where(label[:, None] == 1, 0.5, -0.5).expand(1, 3, height, width).clone()
    probs = torch.full((1, num_classes, height, width), 0.1 / (num_classes - 1))
    probs.scatter_(1, label[:, None], 0.9)
    return image, probs


@pytest.mark.parametrize("backend", BACKENDS)
def test_confident_uniform_regions_unchanged(backend):
    image, probs = two_region_scene()
    refined = dense_crf_probs(image, probs, backend=backend, **SMALL)
    assert refined.shape == probs.shape
    assert torch.equal(refined.argmax(1), probs.argmax(1))
    assert (refined.amax(1) >= probs.amax(1) - 1e-6).all()  # agreement with neighbours only adds confidence
    assert torch.allclose(refined.sum(1), torch.ones(1, 12, 16), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_flipped_pixel_is_smoothed(backend):
    image, probs = two_region_scene()
    probs[0, :, 5, 3] = torch.tensor([0.05, 0.9, 0.05])  # a noisy "class 1" pixel inside the class-0 region
    assert msp_score(probs)[0, 5, 3] == pytest.approx(0.1)
    refined = dense_crf_probs(image, probs, backend=backend, **SMALL)
    assert refined.argmax(1)[0, 5, 3] == 0
    assert torch.equal(refined.argmax(1)[0, :, 8:], torch.ones(12, 8, dtype=torch.long))


def test_no_pairwise_terms_is_the_identity_and_image_none_uses_probs():
    _, probs = two_region_scene()
    same = dense_crf_probs(None, probs, smooth_compat=0, bilateral_compat=0)
    assert torch.allclose(same, probs, atol=1e-6)
    score = msp_crf_score(probs, None, iterations=2, **SMALL)
    assert score.shape == (1, 12, 16) and (score >= 0).all() and (score <= 1).all()


def test_registered_scorer_and_3d_shape():
    image, probs = two_region_scene()
    out = run_scorer("msp_crf", {"probs": probs, "image": image}, iterations=1, **SMALL)
    assert torch.equal(out.pixel_error, out.anomaly) and out.pixel_error.shape == (1, 12, 16)
    volume = torch.randn(1, 2, 4, 5, 6).softmax(1)
    assert dense_crf_probs(None, volume, iterations=1, bilateral_radius=1, bilateral_sxy=1.0).shape == volume.shape


@pytest.mark.skipif(not HAS_PYDENSECRF, reason="no pydensecrf")
def test_torch_smoothness_kernel_close_to_pydensecrf():
    torch.manual_seed(0)
    probs = (2 * torch.randn(1, 3, 16, 20)).softmax(1)
    ours = dense_crf_probs(None, probs, bilateral_compat=0)
    reference = dense_crf_probs(None, probs, bilateral_compat=0, backend="pydensecrf")
    # measured when written: mean |ΔQ| ≈ 3e-3, 99.6% identical labels
    assert (ours - reference).abs().mean() < 0.01
    assert (ours.argmax(1) == reference.argmax(1)).float().mean() > 0.97


def test_bad_inputs():
    image, probs = two_region_scene()
    with pytest.raises(SynthCPInputError, match="image shape"):
        dense_crf_probs(image[..., :-1], probs)
    with pytest.raises(SynthCPInputError, match="backend"):
        dense_crf_probs(image, probs, backend="nope")


@needs_cuda
def test_torch_backend_same_on_cuda():
    image, probs = two_region_scene()
    probs[0, :, 5, 3] = torch.tensor([0.05, 0.9, 0.05])
    cpu = dense_crf_probs(image, probs, **SMALL)
    gpu = dense_crf_probs(image.cuda(), probs.cuda(), **SMALL)
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-5)
