"""The scorers on the real (tiny) networks of ``synthcp3d.networks``: the interfaces fit together."""

from __future__ import annotations

import pytest
import torch

networks = pytest.importorskip("synthcp3d.networks")
if not all(hasattr(networks, name) for name in ("build_segmenter", "build_comparator", "ConfidNetHead")):
    pytest.skip("synthcp3d.networks is incomplete", allow_module_level=True)

from synthcp3d.scoring import SCORERS, run_scorer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def test_every_pixel_scorer_on_a_real_2d_segmenter():
    torch.manual_seed(0)
    segmenter = networks.build_segmenter("unet", 2, 1, 3, dropout=0.2)
    image, synthesis = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        logits, features = segmenter.eval().forward_features(image)
    seg = torch.nn.functional.one_hot(logits.argmax(1), 3).movedim(-1, 1).float()
    tiny = {"encoder_layers": (1,) * 4, "encoder_channels": (8,) * 4, "decoder_channels": 8, "quality_hidden": 8}
    comparator = networks.build_comparator("joint", spatial_dims=2, image_channels=1, num_classes=3, **tiny)
    direct = networks.build_comparator("direct", spatial_dims=2, image_channels=1, num_classes=3, **tiny)
    inputs = {
        "logits": logits,
        "probs": logits.softmax(1),
        "image": image,
        "synthesis": synthesis,
        "segmentation": seg,
        "segmenter": segmenter,
        "comparator": comparator,
        "direct_comparator": direct,
        "confidnet": networks.ConfidNetHead(2, features.shape[1], hidden=(4,)),
        "autoencoder": networks.build_image_autoencoder(2, 1, channels=(4, 8), strides=(2, 2), num_res_units=0),
    }
    options = {"mc_dropout": {"samples": 3}, "msp_crf": {"iterations": 1, "bilateral_radius": 2}}
    ran = set()
    for name, spec in SCORERS.items():
        if any(key not in inputs for key in spec.inputs):
            continue  # vae_alarm: covered in test_scoring_vae_alarm.py
        out = run_scorer(name, inputs, **options.get(name, {}))
        ran.add(name)
        maps = [m for m in (out.pixel_error, out.anomaly) if m is not None]
        assert maps or out.quality is not None, name
        for m in maps:
            assert m.shape == (1, 32, 32) and torch.isfinite(m).all(), name
        if out.quality is not None:
            assert out.quality.shape == (1, 3) and ((out.quality >= 0) & (out.quality <= 1)).all(), name
    assert ran == set(SCORERS) - {"vae_alarm"}
