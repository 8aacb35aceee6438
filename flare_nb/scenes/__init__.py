"""Scenes: posed images with ground truth (notebook 00).

``scene`` (``Scene`` and the loaders of real posed scenes), ``synthetic`` (procedural scenes
with exact ground truth), ``preprocess`` (the official image preprocessing), ``reference_view``
(choosing the reference view), ``sample`` (context and target views of one scene).
"""
