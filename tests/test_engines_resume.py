"""Checkpoints and exact resume: a run killed mid-epoch and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.data import Dataset
from monai.transforms import Compose, RandFlipd, RandGaussianNoised
from monai.utils import set_determinism

from synthcp3d.engines.checkpoint import find_latest_checkpoint, load_checkpoint, load_weights, save_weights
from synthcp3d.engines.gan import GanTrainer
from synthcp3d.workflows.protocol import linear_decay_schedule
from synthcp3d.engines.sampling import make_train_loader
from synthcp3d.engines.segmentation import SegmenterTrainer
from synthcp3d.engines.training import run_training
from synthcp3d.errors import SynthCPInputError
from synthcp3d.networks import SPADEGenerator, build_discriminator, make_gan_optimizers


class Killed(RuntimeError):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _pairs(n: int, size: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        label = torch.randint(0, 3, (1, size, size), generator=g)
        image = label.float() / 2 - 0.5 + 0.1 * torch.randn(1, size, size, generator=g)
        items.append({"image": image, "label": label})
    return items


def _augmented(items: list[dict]) -> Dataset:
    # random transforms exercise the per-sample augmentation seeding across the resume
    transform = Compose(
        [RandFlipd(["image", "label"], prob=0.5, spatial_axis=0), RandGaussianNoised("image", prob=1.0, std=0.1)]
    )
    return Dataset(items, transform)


def _segmenter_trainer() -> tuple[nn.Module, SegmenterTrainer]:
    set_determinism(0)
    # dropout makes the step consume the global RNG, which the checkpoint must restore
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.Conv2d(8, 3, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    loader = make_train_loader(_augmented(_pairs(6)), batch_size=2, seed=3)  # epoch length 3
    return net, SegmenterTrainer("cpu", loader, net, optimizer, lr_scheduler=scheduler)


def _gan_trainer() -> tuple[dict[str, nn.Module], GanTrainer]:
    set_determinism(0)
    gen = SPADEGenerator(2, num_classes=3, out_channels=1, channels=(8, 4), spade_hidden_channels=8)
    disc = build_discriminator(2, num_classes=3, image_channels=1, num_d=1, num_layers_d=2, channels=8)
    opt_g, opt_d = make_gan_optimizers(gen, disc, lr_g=1e-3, lr_d=4e-3)
    loader = make_train_loader(_augmented(_pairs(8)), batch_size=4, seed=5)  # epoch length 2
    schedulers = {"scheduler_g": linear_decay_schedule(opt_g, 5, 0.6), "scheduler_d": linear_decay_schedule(opt_d, 5, 0.6)}
    trainer = GanTrainer("cpu", loader, gen, disc, opt_g, opt_d, num_classes=3, class_mean_weight=1.0,
                         schedulers=schedulers)
    return {"generator": gen, "discriminator": disc, "opt_g": opt_g, "opt_d": opt_d}, trainer


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def _run(factory, out_dir: Path, total: int, every: int, kill_at: int | None = None):
    objects, trainer = factory()
    if kill_at is not None:

        @trainer.on(Events.ITERATION_STARTED(once=kill_at))
        def _kill(_):
            raise Killed(f"killed at iteration {kill_at}")

    run_training(trainer, total, out_dir, checkpoint_every=every, progress=False, log_every=0)
    return objects, trainer


def test_segmenter_resume_is_exact(tmp_path: Path) -> None:
    net_full, trainer_full = _run(_segmenter_trainer, tmp_path / "full", total=7, every=2)
    with pytest.raises(Killed):
        _run(_segmenter_trainer, tmp_path / "killed", total=7, every=2, kill_at=6)
    # the last checkpoint sits mid-epoch (4 = 1 epoch of 3 + 1): the resume must skip exactly one batch
    assert find_latest_checkpoint(tmp_path / "killed").name == "checkpoint_4.pt"
    at_kill = torch.load(tmp_path / "killed" / "checkpoint_4.pt", weights_only=True)["network"]
    net_resumed, trainer_resumed = _run(_segmenter_trainer, tmp_path / "killed", total=7, every=2)

    assert trainer_resumed.state.iteration == trainer_full.state.iteration == 7
    _assert_same_state(net_full.state_dict(), net_resumed.state_dict())
    _assert_same_state(trainer_full.optimizer.state_dict(), trainer_resumed.optimizer.state_dict())
    assert not torch.equal(at_kill["0.weight"], net_resumed.state_dict()["0.weight"])  # it did train on
    # the checkpointer restored its own list: files of the killed run rotate out (n_saved=2)
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["checkpoint_6.pt", "checkpoint_7.pt"]


def test_gan_resume_is_exact(tmp_path: Path) -> None:
    full, _ = _run(_gan_trainer, tmp_path / "full", total=5, every=3)
    with pytest.raises(Killed):
        _run(_gan_trainer, tmp_path / "killed", total=5, every=3, kill_at=5)
    assert find_latest_checkpoint(tmp_path / "killed").name == "checkpoint_3.pt"  # mid-epoch (epoch length 2)
    resumed, _ = _run(_gan_trainer, tmp_path / "killed", total=5, every=3)
    for name in full:
        _assert_same_state(full[name].state_dict(), resumed[name].state_dict())


def test_checkpoint_contents_and_finished_run(tmp_path: Path) -> None:
    _, trainer = _run(_segmenter_trainer, tmp_path, total=3, every=2)
    latest = find_latest_checkpoint(tmp_path)
    assert latest.name == "checkpoint_3.pt"
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]  # atomic: no temporary leftovers
    ckpt = torch.load(latest, weights_only=True)
    assert {"network", "optimizer", "scheduler", "trainer", "rng", "checkpointer"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == 3
    # the scheduler stepped once per iteration (StepLR: step 3 halves 1e-2) before the checkpoint was taken
    assert ckpt["scheduler"]["last_epoch"] == 3
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    assert {"torch", "numpy", "python"} <= set(ckpt["rng"]["ranks"][0])
    # a finished run resumes to a no-op: no training, same weights, the latest checkpoint returned
    net, trainer = _segmenter_trainer()
    assert run_training(trainer, 3, tmp_path, checkpoint_every=2, progress=False, log_every=0) == latest
    assert trainer.state.iteration == 3
    _assert_same_state(net.state_dict(), ckpt["network"])
    # resume=False starts over: the old checkpoints go first, so a later resume cannot pick a stale one
    _, trainer = _segmenter_trainer()
    run_training(trainer, 2, tmp_path, checkpoint_every=2, resume=False, progress=False, log_every=0)
    assert trainer.state.iteration == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_2.pt"]


def test_weights_roundtrip_and_bad_files(tmp_path: Path) -> None:
    net = nn.Linear(3, 2)
    path = save_weights({"segmenter": net}, tmp_path / "w.pt")
    other = nn.Linear(3, 2)
    load_weights({"segmenter": other}, path)
    _assert_same_state(net.state_dict(), other.state_dict())
    with pytest.raises(SynthCPInputError, match="lacks"):
        load_weights({"generator": other}, path)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SynthCPInputError, match="cannot be read"):
        load_checkpoint({}, tmp_path / "bad.pt")
    with pytest.raises(SynthCPInputError, match="does not exist"):
        load_checkpoint({}, tmp_path / "missing.pt")
