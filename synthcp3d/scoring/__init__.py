"""Failure and anomaly scorers behind one interface (:class:`ScoreOutput`, registry :data:`SCORERS`).

Pixel maps are ``(B, *S)`` with "higher = more likely wrong / anomalous"; image-level predictions are per-class
quality ``(B, C)`` in [0, 1]. Importing this package registers every scorer.
"""

from __future__ import annotations

from synthcp3d.scoring.anomaly import (
    TABLE4_THRESHOLDS,
    feature_cosine_distance,
    msp_postprocess,
    synthcp_anomaly_components,
    synthcp_anomaly_score,
    threshold_sweep,
)
from synthcp3d.scoring.autoencoder import autoencoder_score, reconstruction_l1
from synthcp3d.scoring.base import SCORERS, ScoreOutput, ScorerSpec, get_scorer, register_scorer, run_scorer
from synthcp3d.scoring.crf import dense_crf_probs, msp_crf_score
from synthcp3d.scoring.ensemble import mean_ensemble, pairwise_agreement
from synthcp3d.scoring.mc_dropout import (
    MCDropoutFullLinearRegressor,
    MCDropoutQualityRegressor,
    mc_dropout_probs,
    mean_entropy_per_class,
)
from synthcp3d.scoring.regression import LinearQualityRegressor
from synthcp3d.scoring.softmax_scores import entropy_score, max_logit_score, msp_score
from synthcp3d.scoring.synthcp import comparator_scores
from synthcp3d.scoring.tcp import tcp_error_score, tcp_loss, true_class_probability
from synthcp3d.scoring.vae_alarm import per_class_vae_feature, vae_alarm_feature

__all__ = [
    "SCORERS",
    "ScoreOutput",
    "ScorerSpec",
    "get_scorer",
    "register_scorer",
    "run_scorer",
    "msp_score",
    "entropy_score",
    "max_logit_score",
    "mc_dropout_probs",
    "mean_entropy_per_class",
    "MCDropoutQualityRegressor",
    "MCDropoutFullLinearRegressor",
    "LinearQualityRegressor",
    "TABLE4_THRESHOLDS",
    "feature_cosine_distance",
    "msp_postprocess",
    "synthcp_anomaly_components",
    "synthcp_anomaly_score",
    "threshold_sweep",
    "dense_crf_probs",
    "msp_crf_score",
    "true_class_probability",
    "tcp_loss",
    "tcp_error_score",
    "reconstruction_l1",
    "autoencoder_score",
    "vae_alarm_feature",
    "per_class_vae_feature",
    "mean_ensemble",
    "pairwise_agreement",
    "comparator_scores",
]
