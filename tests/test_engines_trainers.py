"""Trainers: GAN improves G(y), comparator targets and frozen generator, mask VAE, segmenter loss and trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import needs_cuda
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.utils import set_determinism

from synthcp3d.engines.comparator import ComparatorTrainer, comparator_optimizer
from synthcp3d.engines.gan import GanTrainer, class_mean_error
from synthcp3d.engines.mask_vae import MaskVAETrainer
from synthcp3d.engines.sampling import make_train_loader
from synthcp3d.engines.segmentation import SegmentationLoss, SegmenterTrainer
from synthcp3d.engines.training import run_training
from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks import (
    MaskVAE,
    SPADEGenerator,
    build_comparator,
    build_discriminator,
    make_gan_optimizers,
    one_hot_labels,
)
from synthcp3d.workflows.protocol import linear_decay_schedule

LEVELS = torch.tensor([-0.8, 0.0, 0.8])


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _scenes(n: int, size: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Label maps of two rectangles on background; the image is a distinct intensity per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        label = torch.zeros(1, size, size, dtype=torch.long)
        r = torch.randint(1, size - 7, (4,), generator=g)
        label[0, r[0] : r[0] + 6, r[1] : r[1] + 6] = 1
        label[0, r[2] : r[2] + 4, r[3] : r[3] + 4] = 2
        image = LEVELS[label] + 0.05 * torch.randn(1, size, size, generator=g)
        items.append({"image": image, "label": label})
    return items


def test_gan_training_improves_synthesis(tmp_path: Path) -> None:
    set_determinism(0)
    items = _scenes(8)
    gen = SPADEGenerator(2, num_classes=3, out_channels=1, channels=(16, 8), spade_hidden_channels=8)
    disc = build_discriminator(2, num_classes=3, image_channels=1, num_d=1, num_layers_d=2, channels=8)
    opt_g, opt_d = make_gan_optimizers(gen, disc, lr_g=1e-3, lr_d=4e-3)
    loader = make_train_loader(Dataset(items), batch_size=4, seed=0)
    trainer = GanTrainer("cpu", loader, gen, disc, opt_g, opt_d, num_classes=3)
    onehot = one_hot_labels(torch.stack([d["label"] for d in items]), 3)
    real = torch.stack([d["image"] for d in items])
    with torch.no_grad():
        l1_init = F.l1_loss(gen(onehot), real).item()
    run_training(trainer, 40, tmp_path, checkpoint_every=0, progress=True, log_every=20)  # bar + loss lines
    with torch.no_grad():
        l1_trained = F.l1_loss(gen.eval()(onehot), real).item()
    assert l1_trained < 0.5 * l1_init, (l1_init, l1_trained)
    out = trainer.state.output
    assert {"loss_g", "loss_d", "loss_g_adv", "loss_g_fm"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())


def test_gan_trainer_moves_a_perceptual_loss_module_to_its_device() -> None:
    """`LocalPerceptualLoss` loads its network on the CPU; a CUDA trainer must move it (else a device mismatch)."""

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(()))
            self.moved_to: list = []

        def to(self, *args, **kwargs):  # type: ignore[override]
            self.moved_to.append(args)
            return super().to(*args, **kwargs)

        def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
            return self.weight * F.l1_loss(fake, real)

    gen = SPADEGenerator(2, num_classes=3, out_channels=1, channels=(8, 8), spade_hidden_channels=4)
    disc = build_discriminator(2, num_classes=3, image_channels=1, num_d=1, num_layers_d=1, channels=4)
    opt_g, opt_d = make_gan_optimizers(gen, disc)
    perceptual = Recorder()
    trainer = GanTrainer("cpu", [], gen, disc, opt_g, opt_d, num_classes=3, perceptual_loss=perceptual)
    assert trainer.perceptual_loss is perceptual and perceptual.moved_to == [(torch.device("cpu"),)]


def _tiny_comparator(mode: str) -> nn.Module:
    return build_comparator(
        mode, spatial_dims=2, image_channels=1, num_classes=3, encoder_layers=(1, 1, 1, 1),
        encoder_channels=(4, 8, 8, 8), decoder_channels=4, quality_hidden=8,
    )


class _SpyGenerator(nn.Module):
    """Records its inputs; output = class intensity of the one-hot input (a perfect, parameterised 'generator')."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.inputs: list[torch.Tensor] = []

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        self.inputs.append(onehot)
        return self.scale * (onehot * LEVELS.view(1, 3, 1, 1)).sum(1, keepdim=True)


def _comparator_items(n: int = 4) -> list[dict[str, torch.Tensor]]:
    items = _scenes(n, size=32)
    for i, item in enumerate(items):
        pred = item["label"].clone()
        pred[0, : 4 + i, :] = 2  # a band of wrong pixels
        item["pred"] = pred
    return items


def test_comparator_trainer_targets_and_frozen_generator() -> None:
    set_determinism(0)
    items = _comparator_items()
    comparator = _tiny_comparator("joint")
    before = {k: v.clone() for k, v in comparator.state_dict().items()}
    gen = _SpyGenerator()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def loss_spy(outputs, quality_target, error_target):
        from synthcp3d.networks import comparator_loss

        seen.append((quality_target, error_target))
        return comparator_loss(outputs, quality_target, error_target)

    loader = DataLoader(Dataset(items), batch_size=2, shuffle=False)
    optimizer = torch.optim.Adam(comparator.parameters(), lr=1e-3)
    trainer = ComparatorTrainer("cpu", loader, comparator, optimizer, num_classes=3, generator=gen, metric="iou",
                                loss_function=loss_spy)
    trainer.run()
    assert trainer.state.iteration == 2

    # the generator ran on the one-hot of the *prediction*, frozen
    assert torch.equal(gen.inputs[0], one_hot_labels(torch.stack([items[0]["pred"], items[1]["pred"]]), 3))
    assert gen.scale.item() == 1.0 and not gen.scale.requires_grad
    # targets: error map = pred != label, quality = per-class IoU (background IoU < 1 since the band is wrong)
    quality, error = seen[0]
    label, pred = items[0]["label"], items[0]["pred"]
    assert torch.equal(error[0], (pred != label).to(error.dtype))
    fg = (pred == 0) & (label == 0)
    iou_bg = fg.sum() / ((pred == 0) | (label == 0)).sum()
    assert quality[0, 0].item() == pytest.approx(iou_bg.item())
    assert any(not torch.equal(before[k], v) for k, v in comparator.state_dict().items())
    assert torch.isfinite(trainer.state.output["loss"])


def test_comparator_direct_mode_needs_no_generator() -> None:
    loader = DataLoader(Dataset(_comparator_items(2)), batch_size=2)
    comparator = _tiny_comparator("direct")
    trainer = ComparatorTrainer("cpu", loader, comparator, torch.optim.Adam(comparator.parameters()), num_classes=3)
    assert trainer.synthesize(torch.zeros(1, 1, 32, 32)) is None
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss_quality_l1"])
    # the softmax as the comparator's segmentation input (authors' release: squeezed by a learned 1x1 conv)
    items = _comparator_items(2)
    for item in items:
        item["prob"] = torch.softmax(torch.randn(3, 32, 32), 0)
    soft = build_comparator(
        "direct", spatial_dims=2, image_channels=1, num_classes=3, seg_input="softmax", encoder_layers=(1, 1, 1, 1),
        encoder_channels=(4, 8, 8, 8), decoder_channels=4, quality_hidden=8,
    )
    trainer = ComparatorTrainer("cpu", DataLoader(Dataset(items), batch_size=2), soft,
                                torch.optim.Adam(soft.parameters()), num_classes=3, segmentation_input="prob")
    trainer.run()
    assert torch.isfinite(trainer.state.output["loss"])
    joint = _tiny_comparator("joint")
    with pytest.raises(ValueError, match="generator"):
        ComparatorTrainer("cpu", loader, joint, torch.optim.Adam(joint.parameters()), num_classes=3)


def test_mask_vae_trainer_reduces_loss(tmp_path: Path) -> None:
    set_determinism(0)
    masks = [{"label": d["label"]} for d in _scenes(8)]
    vae = MaskVAE(2, num_classes=3, in_shape=(16, 16), latent_size=8, channels=(8, 16), strides=(2, 2))
    loader = make_train_loader(Dataset(masks), batch_size=8, seed=0)
    trainer = MaskVAETrainer("cpu", loader, vae, torch.optim.Adam(vae.parameters(), lr=1e-2), num_classes=3)
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    run_training(trainer, 30, tmp_path, checkpoint_every=0, progress=False, log_every=0)
    assert len(losses) == 30
    assert losses[-1] < 0.8 * losses[0], losses


def test_segmentation_loss_ignores_ignore_label() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    label = torch.randint(0, 3, (2, 1, 8, 8))
    label[:, :, :3] = 255
    loss = SegmentationLoss(ignore_index=255)
    changed = logits.clone()
    changed[:, :, :3] = 50.0 * torch.randn(2, 3, 3, 8)  # only ignored pixels change
    assert loss(logits, label).item() == pytest.approx(loss(changed, label).item(), abs=1e-5)
    assert loss(logits, label).item() != pytest.approx(loss(logits.flip(-1), label).item(), abs=1e-5)
    plain = SegmentationLoss()
    assert torch.isfinite(plain(logits, label.clamp(max=2)))


def test_segmenter_trainer() -> None:
    items = [{"image": d["label"].float(), "label": d["label"]} for d in _scenes(4, size=24)]
    loader = DataLoader(Dataset(items), batch_size=2)
    net = nn.Conv2d(1, 3, 3, padding=1)
    before = net.weight.detach().clone()
    trainer = SegmenterTrainer("cpu", loader, net, torch.optim.SGD(net.parameters(), lr=0.1))
    trainer.run()
    assert trainer.to_save.keys() == {"network", "optimizer"}
    assert not torch.equal(before, net.weight)


@needs_cuda
def test_gan_trainer_bf16_amp_on_cuda(tmp_path: Path) -> None:
    set_determinism(0)
    gen = SPADEGenerator(2, num_classes=3, out_channels=1, channels=(16, 8), spade_hidden_channels=8).cuda()
    disc = build_discriminator(2, num_classes=3, image_channels=1, num_d=1, num_layers_d=2, channels=8).cuda()
    opt_g, opt_d = make_gan_optimizers(gen, disc)
    loader = make_train_loader(Dataset(_scenes(8)), batch_size=4, seed=0)
    trainer = GanTrainer("cuda", loader, gen, disc, opt_g, opt_d, num_classes=3, amp=True)
    run_training(trainer, 4, tmp_path, checkpoint_every=2, progress=False, log_every=0)
    assert trainer.use_amp and all(torch.isfinite(v) for v in trainer.state.output.values())
    assert all(p.dtype == torch.float32 for p in gen.parameters())  # autocast, not a cast of the weights


def test_class_mean_error_matches_a_loop() -> None:
    """Per (sample, class present, channel) |mean error|, classes absent from a sample and unlabelled voxels skipped."""
    g = torch.Generator().manual_seed(1)
    fake, real = torch.randn(2, 3, 5, 6, generator=g), torch.randn(2, 3, 5, 6, generator=g)
    labels = torch.randint(0, 3, (2, 5, 6), generator=g)
    labels[1][labels[1] == 2] = 0  # class 2 absent from sample 1
    onehot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()  # class 3 absent everywhere
    onehot[0, :, 0, :] = 0  # a row of "ignore" voxels (all-zero one-hot)
    expected = []
    for b in range(2):
        for c in range(4):
            mask = onehot[b, c] > 0
            if mask.any():
                expected.append(np.mean([abs(float(fake[b, k][mask].mean() - real[b, k][mask].mean())) for k in range(3)]))
    assert class_mean_error(fake, real, onehot).item() == pytest.approx(np.mean(expected), rel=1e-5)
    assert class_mean_error(fake, real, torch.zeros_like(onehot)).item() == 0.0


def test_gan_trainer_reports_its_optional_terms(tmp_path: Path) -> None:
    set_determinism(0)
    gen = SPADEGenerator(2, num_classes=3, out_channels=1, channels=(8, 4), spade_hidden_channels=4)
    disc = build_discriminator(2, num_classes=3, image_channels=1, num_d=1, num_layers_d=1, channels=4)
    opt_g, opt_d = make_gan_optimizers(gen, disc, lr_g=1e-3, lr_d=4e-3)
    loader = make_train_loader(Dataset(_scenes(4)), batch_size=2, seed=0)
    trainer = GanTrainer("cpu", loader, gen, disc, opt_g, opt_d, num_classes=3, reconstruction_weight=10.0,
                         class_mean_weight=10.0)
    run_training(trainer, 2, tmp_path, checkpoint_every=0, progress=False)
    out = trainer.state.output
    assert {"loss_g_l1", "loss_g_class_mean"} <= set(out) and float(out["loss_g_class_mean"]) > 0
    total = out["loss_g_adv"] + out["loss_g_fm"] + out["loss_g_l1"] + out["loss_g_class_mean"]
    assert float(out["loss_g"]) == pytest.approx(float(total), rel=1e-5)


def test_linear_decay_schedule_is_spade_s() -> None:
    """Constant for the first (1 - fraction) of the run, then linear to 0 at the last iteration."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(()))], lr=1.0)
    sched = linear_decay_schedule(opt, iterations=10, fraction=0.4)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25])
    assert opt.param_groups[0]["lr"] == 0.0
    with pytest.raises(SynthCPInputError, match="lr_decay_fraction"):
        linear_decay_schedule(opt, 10, 1.5)


def test_comparator_optimizer_decay_does_not_erase_weights_without_gradient() -> None:
    """A weight whose loss gradient is zero keeps its size under the comparator's optimizer (decoupled decay),
    where Adam's coupled L2 term shrinks it by about lr per step (the measured comparator collapse)."""

    def run(make_optimizer) -> float:
        used = torch.nn.Parameter(torch.full((4,), 0.5))
        idle = torch.nn.Parameter(torch.full((4,), 0.02))  # the size of a deep comparator weight at initialisation
        module = torch.nn.Module()
        module.used, module.idle = used, idle
        optimizer = make_optimizer(module)
        for _ in range(50):
            optimizer.zero_grad()
            ((used - 1.0) ** 2).sum().add(idle.sum() * 0.0).backward()  # idle: zero gradient, not None
            optimizer.step()
        return float(idle.abs().mean())

    for name in ("adamw", "radam"):
        kept = run(lambda m: comparator_optimizer(m, lr=1e-3, weight_decay=1e-4, name=name))
        assert kept == pytest.approx(0.02, rel=1e-5)
    assert run(lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-4)) < 0.002
    with pytest.raises(SynthCPInputError, match="radam"):
        comparator_optimizer(torch.nn.Linear(2, 2), 1e-3, 1e-4, name="adam")


def test_radam_first_steps_are_not_sign_steps() -> None:
    """The collapse's mechanism: Adam's first step moves every weight by lr whatever its gradient (a sign step);
    RAdam's first steps are momentum-SGD steps, proportional to the gradient (here 1000x smaller)."""

    def first_step(name: str) -> torch.Tensor:
        weight = torch.nn.Parameter(torch.zeros(3))
        module = torch.nn.Module()
        module.weight = weight
        optimizer = comparator_optimizer(module, lr=1e-3, weight_decay=0.0, name=name)
        (weight * torch.tensor([1e-3, 1e-4, 1e-5])).sum().backward()  # small, unequal gradients
        optimizer.step()
        return -weight.detach()

    assert torch.allclose(first_step("adamw"), torch.full((3,), 1e-3), rtol=1e-2)
    assert torch.allclose(first_step("radam"), torch.tensor([1e-6, 1e-7, 1e-8]), rtol=1e-2)
