"""Distributed: the same trainer under 2 CPU processes (gloo): identical weights, checkpoints from rank 0 only."""

from __future__ import annotations

import socket
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
import torch.nn as nn
from monai.data import Dataset
from monai.utils import set_determinism

from synthcp3d.engines.distributed import prepare_network, run_distributed, unwrap
from synthcp3d.engines.sampling import make_train_loader
from synthcp3d.engines.segmentation import SegmenterTrainer
from synthcp3d.engines.training import run_training


def _train_worker(local_rank: int, root: str) -> None:
    torch.set_num_threads(1)
    rank = idist.get_rank()
    set_determinism(seed=rank)  # different seeds per rank: DDP must still broadcast rank 0's initial weights
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(8):
        label = torch.randint(0, 3, (1, 8, 8), generator=g)
        items.append({"image": label.float() + 0.1 * torch.randn(1, 8, 8, generator=g), "label": label})
    net = prepare_network(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    loader = make_train_loader(Dataset(items), batch_size=4, seed=0)  # 2 per rank, 2 iterations per epoch
    trainer = SegmenterTrainer(idist.device(), loader, net, optimizer)
    out = Path(root) / f"rank{rank}"  # separate folders: any checkpoint of rank 1 would show up in its own
    run_training(trainer, 3, out, checkpoint_every=2, progress=False, log_every=0)
    torch.save(
        {"world_size": idist.get_world_size(), "batch": loader.batch_size, "weights": unwrap(net).state_dict()},
        Path(root) / f"result{rank}.pt",
    )


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_process_gloo_training(tmp_path: Path) -> None:
    # fork: the workers inherit the imports (spawn would re-import torch and MONAI in each, ~10 s on 2 cores)
    with socket.socket() as sock:  # a free port: parallel test runs must not share a rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_distributed(
        _train_worker, str(tmp_path), backend="gloo", nproc_per_node=2, start_method="fork", master_port=port
    )
    results = [torch.load(tmp_path / f"result{r}.pt", weights_only=True) for r in range(2)]
    assert all(r["world_size"] == 2 and r["batch"] == 2 for r in results)
    for key, value in results[0]["weights"].items():
        assert torch.equal(value, results[1]["weights"][key]), key
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["checkpoint_2.pt", "checkpoint_3.pt"]
    assert not (tmp_path / "rank1").exists() or not any((tmp_path / "rank1").iterdir())
    ckpt = torch.load(tmp_path / "rank0" / "checkpoint_3.pt", weights_only=True)
    assert ckpt["rng"]["world_size"] == 2  # both ranks' RNG states, gathered
    for key, value in ckpt["network"].items():  # saved unwrapped (no "module." prefix)
        assert torch.equal(value, results[0]["weights"][key])
