"""ignite / MONAI engines, one module each: trainers (``segmentation``, ``gan``, ``comparator``, ``mask_vae``, on
``workflow``'s base), ``training`` (run with checkpoints and exact resume), ``checkpoint``, ``sampling`` (resumable
seeded loaders), ``crossval`` (K-fold cross-validated predictions), ``inference`` (sliding-window helpers) and
``distributed``.

Nothing is imported here: loading weights (``engines.checkpoint``) must not pull the trainers into the DSC alarm.
"""
