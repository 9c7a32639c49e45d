"""Retrain one pancreas study's SynthCP comparator exactly as its ``train_comparator`` stage did, logging how well
the network tells cases apart every 50 iterations; optionally with a candidate fix.

    python benchmarks/comparator_collapse_retrain.py runs/v6_seed2 --out /tmp/retrain_a
    python benchmarks/comparator_collapse_retrain.py runs/v6_seed2 --out /tmp/retrain_b --head-norm

Reads the run's ``train_comparator/done.json`` (settings, iterations), ``crossval/cases.json`` (training set),
``models/generator.pt`` and ``models/networks.json``; writes nothing into the run folder. Replays
`synthcp3d.workflows.protocol.fit_comparator` (same seed offset, dataset, loader, AdamW, BCE quality loss), so
without options the first losses equal the run's log. Every 50 iterations (and before the first), in eval mode on
the 26 test cases' saved predictions and on 16 CV training cases: the relative spread of the pooled features per
encoder stage (x branch), the tumour logit's SD, and Spearman of the predicted vs true tumour DSC (RNG states saved
and restored around it, so the logging changes no training step). Writes ``<out>/trajectory.json``,
``<out>/comparator_synthcp.pt`` (`save_weights` format) and ``<out>/losses.json`` (per iteration).

Options (each changes only what it names; the initial weights and sample order stay the stage's):
``--optimizer radam``: RAdam with decoupled weight decay (``torch.optim.RAdam(decoupled_weight_decay=True)``) in
place of AdamW, same lr and decay: the candidate fix tested in
``benchmarks/results/pancreas_demo_study/comparator_collapse_cause.md``. ``--ws``: Weight Standardization in the
encoder's convolutions (`standardize_convs`; tried for 50 steps only). ``--head-norm``: ``BatchNorm1d`` on the
pooled features before the quality MLP (`add_head_norm`; not tried). ``--seed-offset N`` adds N to the
comparator's seed offset; ``--no-difference`` trains without the ``|x - x̂|`` channel (neither tried).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Events
from scipy.stats import spearmanr

from synthcp3d.engines.checkpoint import save_weights
from synthcp3d.engines.comparator import ComparatorTrainer, comparator_optimizer
from synthcp3d.evidence import feature_spread
from synthcp3d.networks.comparator import build_comparator, comparator_loss
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.workflows import pancreas_model as pm
from synthcp3d.workflows import pancreas_scoring as ps
from synthcp3d.workflows.pancreas import cv_records
from synthcp3d.workflows.pancreas_judges import _roi_pair_dataset
from synthcp3d.workflows.protocol import SEED_OFFSETS, run_trainer, seed_stage, train_loader

STAGES = ("layer1", "layer2", "layer3", "layer4")


def add_head_norm(comparator: nn.Module) -> nn.Module:
    """Prepend ``BatchNorm1d(affine=False)`` to the quality MLP of ``comparator`` (in place; returns it)."""
    head = comparator.quality_head
    comparator.quality_head = nn.Sequential(nn.BatchNorm1d(head[0].in_features, affine=False), *head)
    return comparator


class StandardizedConv3d(nn.Conv3d):
    """``Conv3d`` whose filters are standardised (zero mean, unit SD over input channels and taps) in the forward
    pass: Weight Standardization (Qiao et al. 2019), the usual companion of GroupNorm. A filter then has no
    constant ("DC") component, whatever update the optimiser makes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3, 4), keepdim=True)
        std = w.std(dim=(1, 2, 3, 4), keepdim=True, unbiased=False)
        return self._conv_forward(x, (w - mean) / (std + 1e-5), self.bias)


def standardize_convs(module: nn.Module) -> nn.Module:
    """Swap every ``Conv3d`` of ``module`` with more than one input weight per filter for `StandardizedConv3d`
    (same parameters; in place; returns it)."""
    for name, child in module.named_children():
        if type(child) is nn.Conv3d and child.weight[0].numel() > 1:
            ws = StandardizedConv3d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                    child.padding, child.dilation, child.groups, child.bias is not None)
            ws.load_state_dict(child.state_dict())
            setattr(module, name, ws)
        else:
            standardize_convs(child)
    return module


def prior_biases(comparator: nn.Module, mean_quality, wrong_share: float) -> nn.Module:
    """Set the output biases to the training prior (RetinaNet's prior initialisation): the quality head's last
    bias to logit(mean quality per class), the error head's to logit(share of wrong voxels). In place."""
    q = torch.as_tensor(np.clip(np.asarray(mean_quality, dtype=np.float64), 1e-3, 1 - 1e-3), dtype=torch.float32)
    with torch.no_grad():
        comparator.quality_head[-1].bias.copy_(torch.log(q / (1 - q)))
        conv = comparator.error_head[-1]
        conv = getattr(conv, "conv", conv)
        conv.bias.fill_(float(np.log(wrong_share / (1 - wrong_share))))
    return comparator


def build(spec: dict, head_norm: bool, difference: bool, ws: bool = False) -> nn.Module:
    spec = {k: v for k, v in spec.items() if k != "_target_"}
    spec["difference_input"] = difference
    net = build_comparator(**spec)
    if ws:
        standardize_convs(net.encoder)
    return add_head_norm(net) if head_norm else net


def load_cases(folder: Path, study) -> dict[str, list]:
    """Eval sets: test cases (saved predictions, true tumour DSC from ``evaluate/per_case.csv``) and 16 CV cases."""
    meta = json.loads((folder / "prepare" / "cases.json").read_text())
    with open(folder / "evaluate" / "per_case.csv") as fh:
        true_test = {r["case"]: float(r["true_tumour"]) for r in csv.DictReader(fh)}
    cv = list(cv_records(study).values())[::54 // 16 or 1][:16]
    raw = {
        "test": [(meta["cases"][c]["image"], folder / "evaluate" / "predictions" / f"{c}_pred.nii.gz", true_test[c])
                 for c in meta["test"]],
        "cv": [(r["image"], r["pred"], r["true_dsc"][2]) for r in cv],
    }
    out = {}
    for name, cases in raw.items():
        out[name] = []
        for image_path, pred_path, true in cases:
            image = pm.load_volume(image_path).astype(np.float32)
            pred = pm.load_volume(pred_path).astype(np.uint8)
            x, p, _ = ps.roi_tensors(study, image, pred)
            out[name].append((x, one_hot_labels(p, study.num_classes), np.nan if true is None else float(true)))
    return out


@torch.no_grad()
def measure(net: nn.Module, generator: nn.Module, cases: dict[str, list]) -> dict:
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    net.eval()
    result = {}
    for name, items in cases.items():
        pooled = {s: [] for s in STAGES}
        logits, quality, true = [], [], []
        for x, onehot, t in items:
            synth = generator(onehot) if net.use_synthesis else None
            extra = [net._difference(x, synth, onehot)] if net.difference_input else []
            h = torch.cat([x, onehot, *extra], 1)
            enc = net.encoder.net
            h = enc.act(enc.bn1(enc.conv1(h)))
            if not enc.no_max_pool:
                h = enc.maxpool(h)
            for s in STAGES:
                h = getattr(enc, s)(h)
                pooled[s].append(h.flatten(2).mean(-1)[0].numpy())
            out = net(x, onehot, synth) if net.use_synthesis else net(x, onehot)
            feats = out["pooled_features"]
            logits.append(float(net.quality_head(feats)[0, 2]))
            quality.append(float(out["quality"][0, 2]))
            true.append(t)
        true_a, q = np.array(true), np.array(quality)
        ok = ~np.isnan(true_a)
        result[name] = {
            **{f"spread_{s}": feature_spread(np.stack(v)) for s, v in pooled.items()},
            "sd_layer4": float(np.stack(pooled["layer4"]).std(0).mean()),  # the spread's numerator ...
            "mean_abs_layer4": float(np.abs(np.stack(pooled["layer4"])).mean()),  # ... and denominator
            "tumour_logit_sd": float(np.std(logits)),
            "tumour_range": [float(q.min()), float(q.max())],
            "tumour_spearman": float(spearmanr(q[ok], true_a[ok])[0]),
        }
    net.train()
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--head-norm", action="store_true")
    parser.add_argument("--ws", action="store_true", help="Weight Standardization in the encoder's convolutions")
    parser.add_argument("--optimizer", choices=("adamw", "radam"), default="adamw")
    parser.add_argument("--seed-offset", type=int, default=0)
    parser.add_argument("--no-difference", action="store_true")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--early", default="1,2,3,5,10,20", help="also measure after these iterations")
    parser.add_argument("--snapshots", default="", help="save the weights after these iterations (0 = initial)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    done = json.loads((args.folder / "train_comparator" / "done.json").read_text())
    settings = {**done["settings"], "output_dir": str(args.folder), "dataset_dir": str(args.folder / "data"),
                "progress": False, "force": False, "checkpoint_every": 100000}
    study = pm.PancreasStudy(**settings)
    iterations = args.iterations or int(done["iterations"])
    spec = json.loads((args.folder / "models" / "networks.json").read_text())["comparator_synthcp"]

    # train_comparator: dataset, generator; then fit_comparator: seed, network, loader, trainer
    records = cv_records(study)
    items = [{"image": r["image"], "label": r["label"], "pred": r["pred"]} for r in records.values()]
    dataset = _roi_pair_dataset(study, items, "pred", 2, ("image", "label", "pred"))
    generator = pm.load_network(study, "generator")
    offset = SEED_OFFSETS["comparator"] + args.seed_offset
    seed_stage(study, offset)
    net = study.prepare_network(build(spec, args.head_norm, not args.no_difference, args.ws))
    loader = train_loader(study, dataset, 4, int(study.seed) + offset)
    loss = partial(comparator_loss, quality_loss=done["quality_loss"])
    optimizer = (comparator_optimizer(net, 1e-3, 1e-4) if args.optimizer == "adamw" else
                 torch.optim.RAdam(net.parameters(), lr=1e-3, weight_decay=1e-4, decoupled_weight_decay=True))
    trainer = ComparatorTrainer(study.torch_device, loader, net, optimizer,
                                num_classes=study.num_classes, generator=generator, metric="dice", loss_function=loss)
    cases = load_cases(args.folder, study)
    losses, trajectory = [], []
    start = time.time()

    def log_losses(engine) -> None:
        losses.append({k: float(v) for k, v in engine.state.output.items()})

    def log_spread(engine) -> None:
        row = {"iteration": engine.state.iteration, **measure(net, generator, cases)}
        recent = losses[-args.every:]
        if recent:
            row["quality_bce_recent"] = float(np.mean([r["loss_quality_bce"] for r in recent]))
            row["error_bce_recent"] = float(np.mean([r["loss_error_bce"] for r in recent]))
        trajectory.append(row)
        t = row["test"]
        print(f"it {row['iteration']:4d} ({time.time() - start:5.0f} s) q_bce {row.get('quality_bce_recent', float('nan')):.4f} "
              f"test: spread l2/l3/l4 {t['spread_layer2']:.3f}/{t['spread_layer3']:.3f}/{t['spread_layer4']:.3f} "
              f"logit sd {t['tumour_logit_sd']:.3f} range {t['tumour_range'][0]:.3f}-{t['tumour_range'][1]:.3f} "
              f"rho {t['tumour_spearman']:.3f} | cv: l4 {row['cv']['spread_layer4']:.3f} "
              f"rho {row['cv']['tumour_spearman']:.3f} | test l4 sd {t['sd_layer4']:.4f} mean {t['mean_abs_layer4']:.3f}", flush=True)
        (args.out / "trajectory.json").write_text(json.dumps(trajectory, indent=1))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, log_losses)
    early = {int(i) for i in args.early.split(",") if i}
    snapshots = {int(i) for i in args.snapshots.split(",") if i}

    def maybe(engine) -> None:
        it = engine.state.iteration
        if it in snapshots:
            torch.save({k: v.clone() for k, v in net.state_dict().items()}, args.out / f"snapshot_{it}.pt")
        if it == 0 or it in early or it % args.every == 0:
            log_spread(engine)

    trainer.add_event_handler(Events.STARTED, maybe)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, maybe)
    run_trainer(study, trainer, iterations, args.out / "checkpoints")
    save_weights({"comparator": net}, args.out / "comparator_synthcp.pt")
    (args.out / "losses.json").write_text(json.dumps(losses))
    print("first losses:", [round(r["loss"], 3) for r in losses[:4]], f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
