"""The Cityscapes failure-detection study (SynthCP paper, Table 1 and Fig. 5).

The bundle ``bundles/cityscapes_failure_synthcp`` builds a ``CityscapesStudy`` and the networks in
``configs/common.yaml``; each stage config calls one stage function. Modules: ``study`` (the settings, the table rows
and the helpers the others share), ``training`` (``prepare`` to ``train_baselines``), ``scoring`` (every method on
every val image) and ``evaluation`` (``evaluate``: Table 1, Fig. 5). Outputs below ``output_dir``:

- ``prepare``: check the folder, list train / val, cache every image resized to ``image_size``, make the K folds of
  the training split (contiguous blocks of cities as the authors did, or seeded: ``fold_split``);
- ``train_segmenter``: every segmenter of ``segmenters`` (FCN-8, DeepLab-v2) on the whole training split ->
  ``models/segmenter_<name>.pt``;
- ``crossval``: per segmenter, K models each predicting their held-out fold (``crossval/<name>/``, the core's
  `run_crossval` layout) + the MC-Dropout feature of every prediction and the per-class MC-Dropout regressor fitted
  on them -> ``models/mc_dropout_<name>.json``;
- ``train_synthesizer`` (``synthcp2d.studies.common``): 2D SPADE on ground-truth (label, image) pairs ->
  ``models/generator.pt``;
- ``train_comparator``: per segmenter, the comparator in every mode of ``comparator_modes`` (``joint``, ``separate``,
  and ``direct`` = Direct Prediction) on that segmenter's CV predictions -> ``models/comparator_<name>_<mode>.pt``;
- ``train_baselines``: TCP (ConfidNet head on each frozen segmenter) and the VAE alarm (mask VAE on ground-truth
  label maps, ignore pixels filled with the nearest label, + a per-class linear regressor from the VAE loss to IoU
  fitted on each segmenter's CV predictions);
- ``evaluate``: on the val split, per segmenter: image-level (MAE, STD, P.C., S.C. of per-class IoU) and pixel-level
  (FPR95, AUPR-Error, AUPR-Success, AUROC; streamed, both reductions) tables; the cross-model row (comparators
  trained on ``cross_model[0]``'s CV predictions judging ``cross_model[1]``'s masks); per-image scores; Fig. 5.

Ignore-label pixels (trainId 255) are excluded from every target and metric.
"""
