"""Do a trained pancreas study's comparators still tell cases apart? Their encoders' pooled features, measured.

    python benchmarks/comparator_collapse.py runs/study_seed0 [runs/study_seed1 ...]

For SynthCP's comparator and Direct Prediction's, on the test cases' saved predictions (``evaluate``): the relative
spread of the pooled deepest features the quality head reads (`synthcp3d.evidence.feature_spread`: 0 = every case
looks the same, the head then predicts a constant), the range of the predicted tumour DSC, and the mean |weight| of
each encoder stage beside its value at initialisation (a stage whose weights have shrunk towards 0 passes little
of its input on). Prints one Markdown row per comparator and folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from synthcp3d.evidence import COLLAPSED_BELOW, feature_spread
from synthcp3d.networks.synthesizer import one_hot_labels
from synthcp3d.scoring import run_scorer
from synthcp3d.workflows import pancreas_model as pm
from synthcp3d.workflows import pancreas_scoring as ps
from synthcp3d.workflows.trained import build_network, load_network_spec

STAGES = ("layer1", "layer2", "layer3", "layer4")


def stage_weight_sizes(network: torch.nn.Module) -> dict[str, float]:
    """Mean |weight| of the convolutions of each ResNet stage of the (first) encoder."""
    state = network.state_dict()
    sizes = {}
    for stage in STAGES:
        values = [v.abs().mean().item() for k, v in state.items()
                  if k.startswith("encoder.") and f".{stage}." in k and ".conv" in k and k.endswith("weight")]
        sizes[stage] = float(np.mean(values)) if values else float("nan")
    return sizes


@torch.no_grad()
def comparator_health(folder: Path) -> dict[str, dict]:
    """Per comparator of one trained study folder: feature spread, predicted tumour DSC range, stage weights."""
    study = pm.load_study(folder)
    nets = pm.load_trained_models(study)
    meta = json.loads((folder / "prepare" / "cases.json").read_text())
    features: dict[str, list[np.ndarray]] = {"SynthCP": [], "Direct Prediction": []}
    tumour: dict[str, list[float]] = {"SynthCP": [], "Direct Prediction": []}
    for case_id in meta["test"]:
        image = pm.load_volume(meta["cases"][case_id]["image"]).astype(np.float32)
        pred = pm.load_volume(folder / "evaluate" / "predictions" / f"{case_id}_pred.nii.gz").astype(np.uint8)
        judged = ps.synthesize_and_compare(study, nets.generator, nets.synthcp, image, pred)
        direct = run_scorer("direct", {"direct_comparator": nets.direct, "image": judged.x_roi,
                                       "segmentation": one_hot_labels(judged.pred_roi, study.num_classes)})
        for name, out in (("SynthCP", judged.scores), ("Direct Prediction", direct)):
            features[name].append(out.features[0].float().cpu().numpy())
            tumour[name].append(float(out.quality[0, 2]))
    spec = load_network_spec(study.models, "comparator_synthcp", "train_comparator")
    initial = stage_weight_sizes(build_network(spec, "comparator_synthcp"))  # the same architecture, untrained
    return {
        name: {
            "relative_spread": feature_spread(np.stack(features[name])),
            "tumour_range": (min(tumour[name]), max(tumour[name])),
            "weights": stage_weight_sizes(net),
            "weights_at_init": initial,
        }
        for name, net in (("SynthCP", nets.synthcp), ("Direct Prediction", nets.direct))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="trained pancreas study folders (evaluate done)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| folder | comparator | relative spread | collapsed | predicted tumour DSC range | "
          + " | ".join(f"{s} mean abs w (init)" for s in STAGES) + " |")
    print("|---|---|---:|---|---|" + "---:|" * len(STAGES))
    for folder in args.folders:
        for name, row in comparator_health(folder).items():
            lo, hi = row["tumour_range"]
            weights = " | ".join(f"{row['weights'][s]:.4f} ({row['weights_at_init'][s]:.4f})" for s in STAGES)
            print(f"| {folder.name} | {name} | {row['relative_spread']:.3f} | "
                  f"{'yes' if row['relative_spread'] < COLLAPSED_BELOW else 'no'} | {lo:.3f}–{hi:.3f} | {weights} |")


if __name__ == "__main__":
    main()
