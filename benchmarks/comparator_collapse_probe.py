"""Where does a pancreas comparator stop telling cases apart? Per-stage activations, measured.

    python benchmarks/comparator_collapse_probe.py runs/v6_seed0 runs/v6_seed1 runs/v6_seed2 [--json out.json]
    python benchmarks/comparator_collapse_probe.py runs/v6_seed2 --weights synthcp=path/to/comparator.pt

For SynthCP's comparator and Direct Prediction's, on the test cases' saved predictions (``evaluate``) and on the
cross-validated training predictions (``crossval/cases.json``, the comparators' training set, centre crop, no
flip), per encoder stage (stem, layer1..4) and per branch (x / x̂): the relative spread across cases of the
globally pooled activations (`synthcp3d.evidence.feature_spread`), the fraction of dead channels (post-ReLU zero at
every voxel of every case), and the per-case spread of the stage's GroupNorm output. Then the quality head: hidden
ReLU units alive, the tumour logit's spread and the sigmoid's slope there; and the Pearson / Spearman correlation
of the predicted against the true tumour DSC on the test cases.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from synthcp3d.evidence import feature_spread
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.workflows import pancreas_model as pm
from synthcp3d.workflows import pancreas_scoring as ps

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def encoder_stages(encoder: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Post-activation output of the stem and of each ResNet stage ``(1, C, *S)``."""
    net = encoder.net
    h = net.act(net.bn1(net.conv1(x)))
    if not net.no_max_pool:
        h = net.maxpool(h)
    out = {"stem": h}
    for name in STAGES[1:]:
        h = getattr(net, name)(h)
        out[name] = h
    return out


@torch.no_grad()
def case_activations(study, generator, comp, image: np.ndarray, pred: np.ndarray) -> dict:
    """Per branch and stage: pooled activations (C,), per-channel max |activation| (C,); the head's values."""
    x, p, _ = ps.roi_tensors(study, image, pred)
    onehot = one_hot_labels(p, study.num_classes)
    enc = comp.encoder
    if comp.use_synthesis:
        synth = generator(onehot)
        extra = [comp._difference(x, synth, onehot)] if comp.difference_input else []
        inputs = {"x": torch.cat([x, onehot, *extra], 1), "xhat": torch.cat([synth, onehot, *extra], 1)}
        encs = {"x": enc, "xhat": comp.encoder_synthesis or enc}
    else:
        inputs, encs = {"x": torch.cat([x, onehot], 1)}, {"x": enc}
    rec: dict = {"pool": {}, "max": {}}
    for branch, inp in inputs.items():
        for stage, act in encoder_stages(encs[branch], inp).items():
            rec["pool"][(branch, stage)] = act.flatten(2).mean(-1)[0].numpy()
            rec["max"][(branch, stage)] = act.flatten(2).abs().amax(-1)[0].numpy()
    pooled = np.concatenate([rec["pool"][(b, "layer4")] for b in inputs])
    hidden = comp.quality_head[:-1](torch.as_tensor(pooled)[None])  # after the hidden ReLU
    rec["hidden"] = hidden[0].numpy()
    rec["logits"] = comp.quality_head[-1](hidden)[0].numpy()
    out = comp(x, onehot, synth) if comp.use_synthesis else comp(x, onehot)
    assert np.allclose(out["pooled_features"][0].numpy(), pooled, atol=1e-4), "probe disagrees with forward()"
    rec["quality"] = out["quality"][0].numpy()
    return rec


def summarise(records: list[dict]) -> dict:
    keys = records[0]["pool"].keys()
    stages = {}
    for key in keys:
        pool = np.stack([r["pool"][key] for r in records])  # (N, C)
        peak = np.stack([r["max"][key] for r in records])
        alive_sd = pool.std(0)
        stages["/".join(key)] = {
            "relative_spread": feature_spread(pool),
            "dead_channels": float((peak.max(0) == 0).mean()),
            "constant_channels": float((alive_sd < 1e-3 * (np.abs(pool).mean() + 1e-12)).mean()),
            "mean_abs": float(np.abs(pool).mean()),
        }
    head_input = np.stack([np.concatenate([r["pool"][k] for k in keys if k[1] == "layer4"]) for r in records])
    hidden = np.stack([r["hidden"] for r in records])
    logits = np.stack([r["logits"] for r in records])
    q = np.stack([r["quality"] for r in records])
    s = 1 / (1 + np.exp(-logits[:, 2]))
    return {
        "stages": stages,
        "head": {
            "input_relative_spread": feature_spread(head_input),  # = benchmarks/comparator_collapse.py's number
            "hidden_dead": float((hidden.max(0) == 0).mean()),
            "hidden_relative_spread": feature_spread(hidden),
            "tumour_logit_mean": float(logits[:, 2].mean()),
            "tumour_logit_sd": float(logits[:, 2].std()),
            "sigmoid_slope": float((s * (1 - s)).mean()),
            "tumour_pred_range": [float(q[:, 2].min()), float(q[:, 2].max())],
        },
    }


def probe(folder: Path, weights: dict[str, Path], max_cv: int) -> dict:
    study = pm.load_study(folder)
    generator = pm.load_network(study, "generator")
    comps = {"SynthCP": pm.load_network(study, "comparator_synthcp", weights=weights.get("synthcp")),
             "Direct Prediction": pm.load_network(study, "comparator_direct", weights=weights.get("direct"))}
    meta = json.loads((folder / "prepare" / "cases.json").read_text())
    cv = json.loads((folder / "crossval" / "cases.json").read_text())
    with open(folder / "evaluate" / "per_case.csv") as fh:
        true_test = {r["case"]: float(r["true_tumour"]) for r in csv.DictReader(fh)}
    sets = {
        "test": [(meta["cases"][c]["image"], folder / "evaluate" / "predictions" / f"{c}_pred.nii.gz",
                  true_test[c]) for c in meta["test"]],
        "cv": [(r["image"], r["pred"], r["true_dsc"][2]) for r in list(cv.values())[:max_cv]],
    }
    result: dict = {}
    for set_name, cases in sets.items():
        recs = {n: [] for n in comps}
        true, predicted = [], []
        for image_path, pred_path, true_tumour in cases:
            image = pm.load_volume(image_path).astype(np.float32)
            pred = pm.load_volume(pred_path).astype(np.uint8)
            true.append(np.nan if true_tumour is None else float(true_tumour))
            predicted.append(bool((pred == 2).any()))
            for n, comp in comps.items():
                recs[n].append(case_activations(study, generator, comp, image, pred))
        true, predicted = np.array(true), np.array(predicted)
        for n in comps:
            row = summarise(recs[n])
            raw = np.stack([r["quality"] for r in recs[n]])[:, 2]
            reported = np.where(predicted, raw, 0.0)  # "class not predicted -> DSC 0", as the evaluate stage does
            ok = ~np.isnan(true)
            for label, values in (("raw", raw), ("reported", reported)):
                row[f"tumour_pearson_{label}"] = float(pearsonr(values[ok], true[ok])[0])
                row[f"tumour_spearman_{label}"] = float(spearmanr(values[ok], true[ok])[0])
            row["cases"] = len(cases)
            linear = [m for m in comps[n].quality_head if isinstance(m, torch.nn.Linear)]
            row["head"]["w1_rms"] = float(linear[0].weight.pow(2).mean().sqrt())
            row["head"]["w2_tumour_norm"] = float(linear[-1].weight[2].norm())
            row["head"]["b2_tumour"] = float(linear[-1].bias[2])
            result.setdefault(n, {})[set_name] = row
    return result


def print_tables(folder: Path, res: dict) -> None:
    for name, sets in res.items():
        for set_name, row in sets.items():
            h = row["head"]
            print(f"\n### {folder.name} {name} ({set_name}, {row['cases']} cases): tumour pred "
                  f"{h['tumour_pred_range'][0]:.3f}-{h['tumour_pred_range'][1]:.3f}, head input spread "
                  f"{h['input_relative_spread']:.3f}, Pearson "
                  f"{row['tumour_pearson_raw']:.3f}, Spearman {row['tumour_spearman_raw']:.3f} (raw head; with "
                  f"not-predicted = 0: {row['tumour_pearson_reported']:.3f} / {row['tumour_spearman_reported']:.3f}); head: hidden dead "
                  f"{h['hidden_dead']:.2f}, hidden spread {h['hidden_relative_spread']:.3f}, tumour logit "
                  f"{h['tumour_logit_mean']:.3f} ± {h['tumour_logit_sd']:.3f}, sigmoid slope {h['sigmoid_slope']:.3f}; "
                  f"W1 rms {h['w1_rms']:.4f}, |W2 tumour row| {h['w2_tumour_norm']:.3f}, tumour bias {h['b2_tumour']:.3f}")
            print("| branch/stage | relative spread | dead channels | mean pooled |")
            print("|---|---:|---:|---:|")
            for key, s in row["stages"].items():
                print(f"| {key} | {s['relative_spread']:.3f} | {s['dead_channels']:.2f} | {s['mean_abs']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--weights", action="append", default=[], help="synthcp=PATH or direct=PATH")
    parser.add_argument("--max-cv", type=int, default=54)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    weights = {k: Path(v) for k, v in (w.split("=", 1) for w in args.weights)}
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    everything = {}
    for folder in args.folders:
        everything[folder.name] = res = probe(folder, weights, args.max_cv)
        print_tables(folder, res)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
