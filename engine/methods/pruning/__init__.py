"""Pruning methods, laid out like Torch-Pruning: criteria (what is unimportant), schedules (how
much, when), surgery (removing channels consistently with the dependency graph), and one module
per registered method built from those parts:

- ``prune_unstructured``  magnitude pruning of single weights, stored packed
- ``prune_structured``    channel removal (l1, l2, bn_scale, taylor), ratio or MAC target
- ``soft_filter_pruning`` SFP: zero filters every epoch, remove them at the end
- ``slimming``            MorphNet-style MAC-weighted BN-scale L1, shrink to a MAC target, expand
- ``prune_blocks``        whole residual blocks removed (a shallower net), greedy by validation accuracy
- ``sensitivity``         per-layer accuracy-vs-ratio curves (analysis; model unchanged)
"""
from . import blocks, sensitivity, slimming, soft_filter, structured, unstructured  # noqa: F401  (registration)
