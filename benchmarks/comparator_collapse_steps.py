"""The first optimiser steps of a pancreas SynthCP comparator: which update erases the cases' differences?

    python benchmarks/comparator_collapse_steps.py runs/v6_seed2 --snapshots /tmp/retrain_smoke

Part 1 (with ``--snapshots``: a `comparator_collapse_retrain.py --snapshots 0,10` folder): start from the weights
after 10 iterations and put back the initial values of one parameter group at a time (stem, each stage's
convolutions, the GroupNorm affine parameters), or apply one group's 10-iteration change to the initial weights;
measure the absolute SD across the 26 test cases of the pooled layer-4 features (x branch).

Part 2: from the study's initial comparator weights (same seed offset as the stage), ``--steps`` optimiser steps
(default 10) on 3 fixed batches of 4 cross-validated training cases (centre crop, no flip), measuring the same SD
after steps 1, 2, 5, 10, 20, 50. Variants (``--variants`` picks them by index): 0 AdamW (lr 1e-3, decay 1e-4, as
the stage), 1 AdamW on the error term alone, 2 on the quality term alone, 3 SGD (lr 1e-2), 4 AdamW lr 1e-4,
5 AdamW with a linear warm-up over 100 steps, 6 RAdam (decoupled decay), 7 AdamW with Weight Standardization in
the encoder, 8 AdamW with the output biases set to the training prior.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from synthcp3d.networks.comparator import comparator_loss
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.roi import crop_to_box
from synthcp3d.targets import error_map, per_class_quality
from synthcp3d.workflows import pancreas_model as pm
from synthcp3d.workflows import pancreas_scoring as ps
from synthcp3d.workflows.protocol import SEED_OFFSETS, seed_stage

import comparator_collapse_retrain as cr  # noqa: E402  (benchmarks/ on sys.path when run as a script)

GROUPS = {
    "stem": lambda k: k.startswith("encoder.net.conv1") or k.startswith("encoder.net.bn1"),
    **{f"layer{i} conv": (lambda i: lambda k: k.startswith(f"encoder.net.layer{i}.") and ".conv" in k
                          or k.startswith(f"encoder.net.layer{i}.") and "downsample.0" in k)(i) for i in range(1, 5)},
    "GroupNorm affine": lambda k: k.startswith("encoder.") and (".bn" in k or "downsample.1" in k),
}


@torch.no_grad()
def layer4_sd(net, generator, cases) -> float:
    net.eval()
    pooled = []
    for x, onehot in cases:
        synth = generator(onehot)
        h = torch.cat([x, onehot, (x - synth).abs()], 1)
        for f in net.encoder(h)[-1:]:
            pooled.append(f.flatten(2).mean(-1)[0].numpy())
    net.train()
    return float(np.stack(pooled).std(0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--snapshots", type=Path)
    parser.add_argument("--variants", default="", help="indices of the part-2 variants to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("steps.json"))
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    done = json.loads((args.folder / "train_comparator" / "done.json").read_text())
    settings = {**done["settings"], "output_dir": str(args.folder), "dataset_dir": str(args.folder / "data"),
                "progress": False}
    study = pm.PancreasStudy(**settings)
    spec = json.loads((args.folder / "models" / "networks.json").read_text())["comparator_synthcp"]
    generator = pm.load_network(study, "generator")
    meta = json.loads((args.folder / "prepare" / "cases.json").read_text())
    test = []
    for c in meta["test"]:
        image = pm.load_volume(meta["cases"][c]["image"]).astype(np.float32)
        pred = pm.load_volume(args.folder / "evaluate" / "predictions" / f"{c}_pred.nii.gz").astype(np.uint8)
        x, p, _ = ps.roi_tensors(study, image, pred)
        test.append((x, one_hot_labels(p, 3)))
    results: dict = {}

    if args.snapshots:
        s0 = torch.load(args.snapshots / "snapshot_0.pt")
        s10 = torch.load(args.snapshots / "snapshot_10.pt")
        net = cr.build(spec, False, True)
        rows = {}
        for label, state in (("initial", s0), ("after 10 iterations", s10)):
            net.load_state_dict(state)
            rows[label] = layer4_sd(net, generator, test)
        for name, member in GROUPS.items():
            keys = [k for k in s0 if member(k) and s0[k].is_floating_point()]
            net.load_state_dict({**s10, **{k: s0[k] for k in keys}})
            rows[f"after 10, {name} reset to initial"] = layer4_sd(net, generator, test)
            net.load_state_dict({**s0, **{k: s10[k] for k in keys}})
            rows[f"initial + {name}'s 10-iteration change only"] = layer4_sd(net, generator, test)
        results["swap"] = rows
        for k, v in rows.items():
            print(f"| {k} | {v:.4f} |")

    cv = list(json.loads((args.folder / "crossval" / "cases.json").read_text()).values())[:12]
    batches = []
    for i in range(0, 12, 4):
        xs, ps_, ls = [], [], []
        for r in cv[i:i + 4]:
            image = pm.load_volume(r["image"]).astype(np.float32)
            pred = pm.load_volume(r["pred"]).astype(np.uint8)
            label = pm.load_volume(r["label"]).astype(np.int64)
            x, p, box = ps.roi_tensors(study, image, pred)
            xs.append(x), ps_.append(p), ls.append(torch.as_tensor(crop_to_box(label, box, pad_value=0))[None])
        batches.append((torch.cat(xs), torch.cat(ps_), torch.cat(ls)))
    # the training prior: mean CV DSC per class, share of wrong voxels in the ROI crops
    true_cv = np.array([[np.nan if v is None else v for v in r["true_dsc"]]
                        for r in json.loads((args.folder / "crossval" / "cases.json").read_text()).values()])
    wrong = np.mean([float((error_map(p, y) == 1).float().mean()) for _, p, y in batches])
    prior = (np.nanmean(true_cv, 0), wrong)
    print(f"prior: mean CV DSC {np.round(prior[0], 3)}, wrong-voxel share {wrong:.4f}")
    seed_stage(study, SEED_OFFSETS["comparator"])
    init = cr.build(spec, False, True)
    variants = {"AdamW, full loss": ("adamw", 1.0, 1.0), "AdamW, error term only": ("adamw", 0.0, 1.0),
                "AdamW, quality term only": ("adamw", 1.0, 0.0), "SGD (lr 1e-2), full loss": ("sgd", 1.0, 1.0),
                "AdamW lr 1e-4 (the full-size config's), full loss": ("adamw_1e-4", 1.0, 1.0),
                "AdamW + linear warm-up over 100 it, full loss": ("adamw_warmup", 1.0, 1.0),
                "RAdam (decoupled decay), full loss": ("radam", 1.0, 1.0),
                "AdamW, Weight Standardization in the encoder, full loss": ("adamw_ws", 1.0, 1.0),
                "AdamW, output biases at the training prior, full loss": ("adamw_prior", 1.0, 1.0)}
    if args.variants:
        variants = {k: v for i, (k, v) in enumerate(variants.items()) if str(i) in args.variants.split(",")}
    results["steps"] = {}
    points = [p for p in (1, 2, 5, 10, 20, 50, 100, 200) if p <= args.steps]
    print("| variant | step 0 | " + " | ".join(map(str, points)) + " |")
    for name, (opt_name, wq, we) in variants.items():
        net = copy.deepcopy(init)
        if opt_name.endswith("_ws"):
            cr.standardize_convs(net.encoder)
        if opt_name.endswith("_prior"):
            cr.prior_biases(net, *prior)
        if opt_name == "sgd":
            opt = torch.optim.SGD(net.parameters(), lr=1e-2)
        elif opt_name == "radam":
            opt = torch.optim.RAdam(net.parameters(), lr=1e-3, weight_decay=1e-4, decoupled_weight_decay=True)
        else:
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4 if opt_name == "adamw_1e-4" else 1e-3,
                                    weight_decay=1e-4)
        sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 100))
                 if opt_name == "adamw_warmup" else None)
        sds = {0: layer4_sd(net, generator, test)}
        for step in range(1, args.steps + 1):
            x, p, y = batches[(step - 1) % len(batches)]
            onehot = one_hot_labels(p, 3)
            with torch.no_grad():
                synth = generator(onehot)
            net.train()
            out = net(x, onehot, synth)
            _, parts = comparator_loss(out, per_class_quality(p, y, 3, "dice"), error_map(p, y).unsqueeze(1),
                                       quality_loss="bce")
            loss = wq * parts["quality_bce"] + we * parts["error_bce"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if step in points:
                sds[step] = layer4_sd(net, generator, test)
        results["steps"][name] = sds
        print(f"| {name} | " + " | ".join(f"{sds[s]:.4f}" for s in (0, *points)) + " |", flush=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
