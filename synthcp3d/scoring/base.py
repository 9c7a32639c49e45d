"""The one interface every failure / anomaly scorer shares: a :class:`ScoreOutput` and a registry by name.

Conventions, whatever the method:

- ``pixel_error`` ``(B, *S)`` float: higher = the pixel is more likely wrongly segmented;
- ``anomaly`` ``(B, *S)`` float: higher = the pixel more likely shows something unseen in training;
- ``quality`` ``(B, C)`` float in [0, 1]: predicted per-class quality (IoU in 2D, DSC in 3D); NaN = no prediction.

Uncertainty maps (MSP, entropy, max-logit, MC-Dropout) serve both failure and anomaly detection, so those
scorers fill ``pixel_error`` and ``anomaly`` with the same tensor.

Registry: ``SCORERS[name]`` is a :class:`ScorerSpec` saying which named inputs the scorer needs, so a bundle
config can list methods by name and an evaluator hands each one what it needs with :func:`run_scorer`. The input
names used across the package:

- ``logits``: segmenter logits ``(B, C, *S)``; ``probs``: its softmax ``(B, C, *S)``;
- ``image``: input image ``(B, Cin, *S)``; ``synthesis``: synthesized image ``x̂ = G(ŷ)``, same shape;
- ``segmentation``: predicted segmentation, one-hot ``(B, C, *S)``;
- ``segmenter``: segmentation network with ``forward_features(x) -> (logits, features)``;
- ``comparator``: siamese comparator, ``forward(image, segmentation, synthesis=None) -> dict``;
  ``direct_comparator``: one built without the synthesis branch (Direct Prediction);
- ``confidnet``: ConfidNet head on segmenter features (TCP); ``autoencoder``: image auto-encoder (AE baseline);
- ``vae``: frozen mask VAE; ``vae_mask``: predicted mask cropped to its ``in_shape``, one-hot ``(B, C, *in_shape)``;
- ``mc_regressor`` / ``vae_regressor``: fitted quality regressors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from synthcp3d.errors import SynthCPInputError

__all__ = [
    "ScoreOutput",
    "ScorerSpec",
    "SCORERS",
    "register_scorer",
    "get_scorer",
    "run_scorer",
    "inference_mode",
    "check_class_tensor",
]


@dataclass
class ScoreOutput:
    """What every scorer returns; fields a method does not produce stay ``None``.

    Attributes:
        pixel_error: ``(B, *S)``, higher = more likely wrong.
        quality: ``(B, C)`` predicted quality in [0, 1] (NaN where a method makes no prediction).
        anomaly: ``(B, *S)``, higher = more likely anomalous.
        features: ``(B, F)`` what a learned quality head read (the comparators' pooled features; a diagnostic).
    """

    pixel_error: torch.Tensor | None = None
    quality: torch.Tensor | None = None
    anomaly: torch.Tensor | None = None
    features: torch.Tensor | None = None

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The fields that are set, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class ScorerSpec:
    """A registered scorer: ``fn(**inputs, **options) -> ScoreOutput``.

    Attributes:
        name: registry key.
        fn: the scorer.
        inputs: names of the required inputs (see the module docstring).
        optional: names of inputs passed when available.
        description: one line for listings and reports.
    """

    name: str
    fn: Callable[..., ScoreOutput]
    inputs: tuple[str, ...]
    optional: tuple[str, ...] = field(default=())
    description: str = ""


SCORERS: dict[str, ScorerSpec] = {}


def register_scorer(
    name: str, inputs: tuple[str, ...], optional: tuple[str, ...] = (), description: str = ""
) -> Callable[[Callable[..., ScoreOutput]], Callable[..., ScoreOutput]]:
    """Decorator adding ``fn`` to :data:`SCORERS` under ``name`` (a duplicate name is a programming error)."""

    def decorator(fn: Callable[..., ScoreOutput]) -> Callable[..., ScoreOutput]:
        if name in SCORERS:
            raise KeyError(f"scorer {name!r} is registered twice")
        SCORERS[name] = ScorerSpec(name, fn, tuple(inputs), tuple(optional), description)
        return fn

    return decorator


def get_scorer(name: str) -> ScorerSpec:
    """Look up a scorer by name, with a message listing the known names."""
    try:
        return SCORERS[name]
    except KeyError:
        raise SynthCPInputError(f"unknown scorer {name!r}; known scorers: {', '.join(sorted(SCORERS))}") from None


def run_scorer(name: str, inputs: Mapping[str, Any], **options: Any) -> ScoreOutput:
    """Run scorer ``name`` on the subset of ``inputs`` it needs.

    Args:
        name: a key of :data:`SCORERS`.
        inputs: every input the caller has, by the names in the module docstring; extra ones are ignored.
        options: keyword options of the scorer (e.g. ``t=0.999``, ``samples=50``).
    """
    spec = get_scorer(name)
    missing = [key for key in spec.inputs if inputs.get(key) is None]
    if missing:
        raise SynthCPInputError(f"scorer {name!r} needs the input(s) {', '.join(missing)}, which were not given")
    kwargs = {key: inputs[key] for key in spec.inputs}
    kwargs.update({key: inputs[key] for key in spec.optional if inputs.get(key) is not None})
    return spec.fn(**kwargs, **options)


@contextlib.contextmanager
def inference_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; every submodule's own ``training`` flag restored afterwards.

    ``monai.networks.eval_mode`` restores only the top-level flag (calling ``.train()`` on the whole net),
    which would wake deliberately frozen submodules and would not undo MC-Dropout's train-mode dropout layers.
    """
    states = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        with torch.no_grad():
            yield
    finally:
        for m, training in states:
            m.training = training


def check_class_tensor(tensor: torch.Tensor, name: str, min_ndim: int = 2) -> None:
    """Check a ``(B, C, *S)`` tensor: enough dimensions, at least one class, no NaN."""
    if not isinstance(tensor, torch.Tensor):
        raise SynthCPInputError(f"{name} must be a torch.Tensor of shape (B, C, *spatial), got {type(tensor).__name__}")
    if tensor.ndim < min_ndim or tensor.shape[1] < 1:
        raise SynthCPInputError(f"{name} must have shape (B, C, *spatial), got {tuple(tensor.shape)}")
    if tensor.is_floating_point() and torch.isnan(tensor).any():
        raise SynthCPInputError(f"{name} contains NaN values")
