"""Settings and network factories as plain JSON records: what ``done.json`` and ``models/networks.json`` hold.

:func:`to_json` turns settings into JSON data (readable, or exact with ``strict``); :func:`describe_factory` names a
bundle config's network factory so that :func:`synthcp3d.workflows.common.build_network` can rebuild it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from synthcp3d.errors import SynthCPInputError

__all__ = ["to_json", "describe_factory", "NETWORK_PACKAGES"]


def to_json(value: Any, strict: bool = False) -> Any:
    """``value`` as plain JSON data: tuples -> lists, numpy scalars/arrays -> numbers/lists, paths -> strings.

    Anything else becomes its ``str`` (a readable record), or with ``strict`` raises `SynthCPInputError` (a value
    that must be read back exactly, e.g. a network argument).
    """
    if isinstance(value, Mapping):
        return {str(k): to_json(v, strict) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, strict) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (np.generic, np.ndarray)):
        return to_json(value.tolist(), strict)
    if isinstance(value, Path):
        return str(value)
    if strict:
        raise SynthCPInputError(f"{value!r} ({type(value).__name__}) cannot be written as JSON")
    return str(value)


#: modules whose callables ``networks.json`` may name (it travels with trained bundles: nothing else is built)
NETWORK_PACKAGES = ("synthcp3d.", "synthcp2d.")


def describe_factory(factory: Any) -> dict:
    """JSON description ``{"_target_": "module.callable", **arguments}`` of a network factory from a bundle config
    (``_mode_: callable``: a ``functools.partial`` of keyword arguments, or the callable itself when it has none);
    :func:`build_network` rebuilds the network from it.

    Raises:
        SynthCPInputError: not such a factory, or an argument is not JSON data.
    """
    func, args, keywords = factory, (), {}
    if isinstance(factory, partial):
        func, args, keywords = factory.func, factory.args, factory.keywords
    if args or not callable(func) or not hasattr(func, "__qualname__"):
        raise SynthCPInputError(f"network factory {factory!r} is not a config factory (`_mode_: callable`)")
    target = f"{func.__module__}.{func.__qualname__}"
    try:
        return {"_target_": target, **{k: to_json(v, strict=True) for k, v in keywords.items()}}
    except SynthCPInputError as err:
        raise SynthCPInputError(f"network factory {target}: {err}") from None
