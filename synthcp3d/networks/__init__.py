"""Dimension-generic networks (``spatial_dims`` 2 | 3): SPADE synthesizer and discriminator, GAN losses, siamese
comparator, mask VAE, segmenters and the baselines' heads."""

from __future__ import annotations

from synthcp3d.networks.baseline_heads import ConfidNetHead, build_image_autoencoder
from synthcp3d.networks.comparator import SeparateComparator, SiameseComparator, build_comparator, comparator_loss
from synthcp3d.networks.gan_losses import (
    FEATURE_MATCHING_WEIGHT,
    SPADE_OPTIMIZER_DEFAULTS,
    HingeGANLoss,
    LocalPerceptualLoss,
    feature_matching_loss,
    make_gan_optimizers,
)
from synthcp3d.networks.mask_vae import MaskVAE, kl_divergence, vae_loss
from synthcp3d.networks.resnet_encoder import ResNetEncoder, load_encoder_weights
from synthcp3d.networks.segmenters import SEGMENTER_NAMES, Segmenter, build_segmenter, enable_mc_dropout, mc_dropout
from synthcp3d.networks.synthesizer import SPADEGenerator, build_discriminator, discriminator_input, one_hot_labels

__all__ = [
    "ConfidNetHead",
    "build_image_autoencoder",
    "SeparateComparator",
    "SiameseComparator",
    "build_comparator",
    "comparator_loss",
    "FEATURE_MATCHING_WEIGHT",
    "SPADE_OPTIMIZER_DEFAULTS",
    "HingeGANLoss",
    "LocalPerceptualLoss",
    "feature_matching_loss",
    "make_gan_optimizers",
    "MaskVAE",
    "kl_divergence",
    "vae_loss",
    "ResNetEncoder",
    "load_encoder_weights",
    "SEGMENTER_NAMES",
    "Segmenter",
    "build_segmenter",
    "enable_mc_dropout",
    "mc_dropout",
    "SPADEGenerator",
    "build_discriminator",
    "discriminator_input",
    "one_hot_labels",
]
