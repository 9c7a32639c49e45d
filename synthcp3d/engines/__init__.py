"""ignite / MONAI engines: trainers (segmenter, GAN, comparator, mask VAE), checkpoint and exact resume, K-fold
cross-validated predictions, sliding-window inference, distributed training."""

from __future__ import annotations

from synthcp3d.engines.checkpoint import (
    RNGState,
    attach_checkpointing,
    find_latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_weights,
)
from synthcp3d.engines.comparator import ComparatorTrainer
from synthcp3d.engines.crossval import (
    load_manifest,
    load_prediction,
    load_probabilities,
    make_folds,
    run_crossval,
    save_prediction,
    save_probabilities,
)
from synthcp3d.engines.distributed import device, is_main_process, prepare_network, run_distributed, unwrap
from synthcp3d.engines.gan import GanTrainer
from synthcp3d.engines.inference import (
    make_inferer,
    sliding_window_error_map,
    sliding_window_segment,
    sliding_window_synthesize,
)
from synthcp3d.engines.mask_vae import MaskVAETrainer
from synthcp3d.engines.sampling import (
    ReproducibleDataset,
    ResumableSampler,
    attach_resumable_sampler,
    make_train_loader,
)
from synthcp3d.engines.segmentation import SegmentationLoss, SegmenterTrainer, create_segmenter_evaluator
from synthcp3d.engines.training import run_training
from synthcp3d.engines.workflow import BaseTrainer, autocast, losses_of

__all__ = [
    "RNGState",
    "attach_checkpointing",
    "find_latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "save_weights",
    "ComparatorTrainer",
    "load_manifest",
    "load_prediction",
    "load_probabilities",
    "make_folds",
    "run_crossval",
    "save_prediction",
    "save_probabilities",
    "device",
    "is_main_process",
    "prepare_network",
    "run_distributed",
    "unwrap",
    "GanTrainer",
    "make_inferer",
    "sliding_window_error_map",
    "sliding_window_segment",
    "sliding_window_synthesize",
    "MaskVAETrainer",
    "ReproducibleDataset",
    "ResumableSampler",
    "attach_resumable_sampler",
    "make_train_loader",
    "SegmentationLoss",
    "SegmenterTrainer",
    "create_segmenter_evaluator",
    "run_training",
    "BaseTrainer",
    "autocast",
    "losses_of",
]
