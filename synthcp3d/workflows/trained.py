"""Keeping a trained network and loading it back, the same way for every study and any ``spatial_dims``.

:func:`save_network` writes the weights ``{key: state_dict}`` to ``models/<name>.pt`` and how to build the network to
``models/networks.json`` (:func:`save_network_spec`: the bundle config factory's JSON spec). :func:`load_network`
reads it back: built by the config's factory or, without it, from the spec (:func:`load_network_spec`,
:func:`build_network`), its class count checked against the study's, every failure a one-line `SynthCPInputError`.
No training code: the DSC alarm reads trained folders through it.
"""

from __future__ import annotations

import json
import pydoc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch

from synthcp3d.engines.checkpoint import load_weights, save_weights
from synthcp3d.errors import SynthCPInputError
from synthcp3d.utils.atomic import atomic_save_json
from synthcp3d.workflows.common import StudyBase, require_file
from synthcp3d.workflows.records import NETWORK_PACKAGES, describe_factory

__all__ = ["Factory", "save_network", "save_network_spec", "load_network", "load_network_spec", "build_network"]

Factory = Callable[..., torch.nn.Module]


def save_network_spec(study: StudyBase, name: str, factory: Any) -> None:
    """Record how ``models/<name>.pt`` is built in ``models/networks.json`` (so weights can be reloaded elsewhere);
    on rank 0 only, as `save_weights`."""
    if idist.get_rank() != 0:
        return
    path = study.models / "networks.json"
    specs = json.loads(path.read_text()) if path.is_file() else {}
    specs[name] = describe_factory(factory)
    atomic_save_json(specs, path)


def save_network(study: StudyBase, name: str, key: str, net: torch.nn.Module, factory: Any) -> Path:
    """The one way a trained network is kept: weights ``{key: state}`` in ``models/<name>.pt`` (`save_weights`:
    atomic, rank 0) and how to build it in ``models/networks.json``. Returns the weights' path."""
    path = study.models / f"{name}.pt"
    save_weights({key: net}, path)
    save_network_spec(study, name, factory)
    return path


def load_network(
    study: StudyBase,
    name: str,
    key: str,
    stage: str,
    factory: Factory | None = None,
    weights: str | Path | None = None,
) -> torch.nn.Module:
    """Network ``name`` as :func:`save_network` kept it, with its trained weights, in eval mode on the study's device.

    Built with ``factory`` (the bundle config's) or, without it, from ``models/networks.json``; the weights
    ``{key: state_dict}`` come from ``models/<name>.pt`` or from ``weights`` (e.g. a cross-validation fold's
    segmenter). The errors name ``stage``, the one that writes them.

    Raises:
        SynthCPInputError: spec or weights absent, a class count other than the study's, weights that do not fit.
    """
    if factory is not None:
        spec = dict(getattr(factory, "keywords", {}))
    else:
        spec = load_network_spec(study.models, name, stage)
    _check_class_count(study, name, spec)
    weights = study.models / f"{name}.pt" if weights is None else Path(weights)
    if not weights.is_file():
        raise SynthCPInputError(f"weights {weights} are absent: run the {stage} stage first")
    net = factory() if factory is not None else build_network(spec, name)
    try:
        load_weights({key: net}, weights)
    except SynthCPInputError:
        raise
    except Exception as err:  # noqa: BLE001 - size mismatches (RuntimeError), truncated files (EOFError, pickle)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SynthCPInputError(f"weights {weights} do not fit network {name!r} ({first})") from None
    return net.to(study.torch_device).eval()


def _check_class_count(study: StudyBase, name: str, spec: Mapping[str, Any]) -> None:
    """A network built for another number of classes than ``study.num_classes`` -> `SynthCPInputError` (a spec
    without ``num_classes``, e.g. an image auto-encoder's, passes)."""
    num_classes = spec.get("num_classes")
    if num_classes is None or int(num_classes) == study.num_classes:
        return
    labels = getattr(study, "class_names", None)  # the pancreas study names its labels; the 2D ones count them
    theirs = f"the study's labels are {list(labels)}" if labels else f"the study has {study.num_classes}"
    raise SynthCPInputError(f"label count differs: network {name!r} has {num_classes} classes, {theirs}")


def load_network_spec(models: str | Path, name: str, stage: str) -> dict:
    """The ``networks.json`` entry of network ``name`` (see :func:`save_network_spec`) in the ``models`` folder.

    Raises:
        SynthCPInputError: the file is missing or unreadable, or has no entry ``name`` (``stage`` writes it).
    """
    path = require_file(Path(models) / "networks.json", stage)
    try:
        specs = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SynthCPInputError(f"network specs {path} are unreadable ({err})") from None
    if not isinstance(specs, dict) or not isinstance(specs.get(name), dict):
        raise SynthCPInputError(f"{path} describes no {name!r} network: run the {stage} stage")
    return dict(specs[name])


def build_network(spec: Mapping[str, Any], name: str) -> torch.nn.Module:
    """Build a network from its :func:`describe_factory` spec: ``_target_(**arguments)``.

    Only callables of this project are built, called directly with the JSON arguments (nothing is evaluated).

    Raises:
        SynthCPInputError: unexpected ``_target_``, or the constructor refuses the arguments.
    """
    args = dict(spec)
    target = str(args.pop("_target_", ""))
    factory = pydoc.locate(target) if target.startswith(NETWORK_PACKAGES) else None
    if not callable(factory):
        raise SynthCPInputError(f"networks.json entry {name!r} has an unexpected _target_ {target!r}")
    try:
        return factory(**args)
    except Exception as err:  # noqa: BLE001 - constructors raise many types for arguments that do not fit
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SynthCPInputError(f"cannot build network {name!r} from networks.json: {first}") from None
