"""The study registry: what a study is (:class:`Study`, read from its bundle's ``configs/study.yaml``) and where its
bundle folder lies, below the command line (``synthcp3d.study_cli``, which scans the bundles folder once at import:
``STUDIES``) and below the alarm and the exporter, which look up the pancreas bundle's configs when called.

Nothing is scanned when this module is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synthcp3d.errors import SynthCPInputError

__all__ = ["Study", "bundles_root", "read_study", "discover_studies", "bundle_dir", "study_bundle"]


@dataclass(frozen=True)
class Study:
    """A study = a bundle folder and how ``synthcp run`` runs it, read from the bundle's ``configs/study.yaml``.

    Attributes:
        name: the study's name on the command line.
        bundle: the bundle folder's name (``bundles/<bundle>``).
        stages: in order; a stage = ``configs/<stage>.yaml`` merged onto ``configs/common.yaml`` = ``<out>/<stage>``.
        report_stage: the stage whose report ``synthcp run`` prints at the end.
        training_stages: the stages that train networks (run on every process with ``--nproc N``).
        data_help: what ``--data`` must point at.
        demo_data: the demo data set: ``maker`` ("module:function" writing it under ``OUT/data``, called with
            ``settings``), ``ready`` (the file whose presence means it is there), ``dataset`` (the folder, relative to
            ``OUT/data``, given to the bundle as ``dataset_dir``), ``checker`` ("module:function" checking a data
            set folder: ``synthcp data check``).
        demo_settings: the demo's overrides: ``common`` and one mapping per stage name.
        demo_profiles: larger demo profiles (``--profile NAME``), each merged over ``demo_settings``.
    """

    name: str
    bundle: str
    stages: tuple[str, ...]
    report_stage: str
    training_stages: tuple[str, ...] = ()
    data_help: str = ""
    demo_data: Mapping[str, Any] = field(default_factory=dict)
    demo_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    demo_profiles: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)


def bundles_root() -> Path:
    """The folder holding the bundles: ``bundles/`` of the source tree, or ``$SYNTHCP_BUNDLES``."""
    return Path(os.environ.get("SYNTHCP_BUNDLES", Path(__file__).resolve().parents[1] / "bundles"))


def read_study(bundle: Path) -> Study:
    """The :class:`Study` described by ``bundle/configs/study.yaml``.

    Raises:
        SynthCPInputError: the file is missing or unreadable, a key is missing, or a stage has no config file.
    """
    path = bundle / "configs" / "study.yaml"
    try:
        spec = yaml.safe_load(path.read_text())
        demo = spec.get("demo") or {}
        study = Study(
            name=str(spec["name"]), bundle=bundle.name, stages=tuple(spec["stages"]),
            report_stage=str(spec["report_stage"]), training_stages=tuple(spec.get("training_stages") or ()),
            data_help=str(spec.get("data_help", "")), demo_data=demo.get("data") or {},
            demo_settings=demo.get("settings") or {}, demo_profiles=demo.get("profiles") or {},
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        raise SynthCPInputError(f"{path}: not a readable study description ({type(e).__name__}: {e})") from None
    missing = [s for s in study.stages if not (bundle / "configs" / f"{s}.yaml").is_file()]
    wrong = [s for s in (study.report_stage, *study.training_stages) if s not in study.stages]
    if missing or wrong:
        raise SynthCPInputError(f"{path}: stage(s) without configs/<stage>.yaml: {missing}; not among the stages: {wrong}")
    return study


def discover_studies(root: Path | None = None) -> dict[str, Study]:
    """Every bundle under ``root`` (default :func:`bundles_root`) that has a ``configs/study.yaml``, by study name."""
    root = bundles_root() if root is None else root
    found = [read_study(p.parents[1]) for p in sorted(root.glob("*/configs/study.yaml"))]
    return {s.name: s for s in found}


def bundle_dir(study: Study) -> Path:
    """The bundle folder of ``study`` under :func:`bundles_root`."""
    path = bundles_root() / study.bundle
    if not (path / "configs" / "common.yaml").is_file():
        raise SynthCPInputError(f"bundle folder {path} not found (set SYNTHCP_BUNDLES to the folder holding {study.bundle})")
    return path


def study_bundle(name: str) -> Path:
    """The bundle folder of study ``name``, found by scanning :func:`bundles_root` now.

    Raises:
        SynthCPInputError: no bundle there describes that study, or its folder lacks ``configs/common.yaml``.
    """
    studies = discover_studies()
    if name not in studies:
        raise SynthCPInputError(
            f"the {name} study bundle is not found under {bundles_root()} (set SYNTHCP_BUNDLES to the bundles folder)"
        )
    return bundle_dir(studies[name])
