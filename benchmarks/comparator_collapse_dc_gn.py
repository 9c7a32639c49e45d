"""Constant ("DC") filter components and GroupNorm inputs of pancreas SynthCP comparators.

    python benchmarks/comparator_collapse_dc_gn.py runs/v6_seed2 --snapshots /tmp/retrain_smoke \
        --final runs/v6_seed0 runs/v6_seed1 runs/v6_seed2 --weights /tmp/retrain_b/comparator_synthcp.pt

On the test cases of the first folder (its G, its saved predictions), for the initial weights and those after 10
iterations (``--snapshots``: a `comparator_collapse_retrain.py --snapshots 0,10` folder), for the final comparators
of the ``--final`` folders and for extra ``--weights`` files:

- the absolute SD across the 26 test cases of the pooled layer-4 features (x branch), as is and with every encoder
  convolution's filters made zero-mean (their constant component over input channels and taps removed);
- per GroupNorm (the second norm of the last block of stages 2-4, and of the first block of stage 4), on 16 test
  cases: the normaliser's divisor (within-case SD of its input, mean over groups and cases) and the case-specific
  share of its input's variance (1 - variance of the across-case mean map / mean within-case variance).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import comparator_collapse_retrain as cr  # noqa: E402
import comparator_collapse_steps as cs  # noqa: E402
from synthcp3d.networks.synthesizer import one_hot_labels  # noqa: E402
from synthcp3d.workflows import pancreas_model as pm  # noqa: E402
from synthcp3d.workflows import pancreas_scoring as ps  # noqa: E402

NORMS = ("net.layer2.1.bn2", "net.layer3.1.bn2", "net.layer4.0.bn2", "net.layer4.1.bn2")


def zero_mean_filters(state: dict) -> dict:
    return {k: (v - v.mean(dim=(1, 2, 3, 4), keepdim=True)
                if k.startswith("encoder.net.") and k.endswith("weight") and v.ndim == 5 else v)
            for k, v in state.items()}


@torch.no_grad()
def norm_inputs(net, inputs) -> str:
    net.eval()
    rec = {n: [] for n in NORMS}
    modules = dict(net.encoder.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: rec[n].append(i[0][0].clone())) for n in NORMS]
    for h in inputs:
        net.encoder(h)
    for hook in hooks:
        hook.remove()
    cells = []
    for n in NORMS:
        a = torch.stack(rec[n])
        groups = a.reshape(a.shape[0], 8, -1)
        common = a.mean(0, keepdim=True).expand_as(a).reshape(a.shape[0], 8, -1)
        share = 1 - float(common.var(-1).mean() / groups.var(-1).mean())
        cells.append(f"{groups.std(-1).mean().item():.3f} / {share:.3f}")
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--snapshots", type=Path)
    parser.add_argument("--final", nargs="*", type=Path, default=[])
    parser.add_argument("--weights", nargs="*", type=Path, default=[])
    args = parser.parse_args()
    study = pm.load_study(args.folder)
    spec = json.loads((args.folder / "models" / "networks.json").read_text())["comparator_synthcp"]
    generator = pm.load_network(study, "generator")
    meta = json.loads((args.folder / "prepare" / "cases.json").read_text())
    test, inputs = [], []
    with torch.no_grad():
        for c in meta["test"]:
            image = pm.load_volume(meta["cases"][c]["image"]).astype(np.float32)
            pred = pm.load_volume(args.folder / "evaluate" / "predictions" / f"{c}_pred.nii.gz").astype(np.uint8)
            x, p, _ = ps.roi_tensors(study, image, pred)
            onehot = one_hot_labels(p, study.num_classes)
            test.append((x, onehot))
            if len(inputs) < 16:
                inputs.append(torch.cat([x, onehot, (x - generator(onehot)).abs()], 1))
    states = {}
    if args.snapshots:
        states["initial"] = torch.load(args.snapshots / "snapshot_0.pt")
        states["after 10 iterations"] = torch.load(args.snapshots / "snapshot_10.pt")
    for folder in args.final:
        states[f"{folder.name} final"] = pm.load_network(pm.load_study(folder), "comparator_synthcp").state_dict()
    for path in args.weights:
        states[str(path)] = torch.load(path)["comparator"]
    net = cr.build(spec, False, True)
    print("| weights | layer-4 SD | with zero-mean filters | " + " | ".join(f"{n[4:]} divisor / case share" for n in NORMS)
          + " |")
    print("|---|---:|---:|" + "---:|" * len(NORMS))
    for label, state in states.items():
        net.load_state_dict(state)
        sd, gn = cs.layer4_sd(net, generator, test), norm_inputs(net, inputs)
        net.load_state_dict(zero_mean_filters(state))
        print(f"| {label} | {sd:.4f} | {cs.layer4_sd(net, generator, test):.4f} | {gn} |", flush=True)


if __name__ == "__main__":
    main()
