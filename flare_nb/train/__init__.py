"""Training the FLARE cascade (notebook 06), one module per concern.

``loop`` (:func:`flare_nb.train.loop.train`, the run), ``config`` (the typed configuration),
``build`` (the model, its initial weights, what is frozen), ``optim`` (AdamW and the
schedule), ``data`` (datasets, the scenes of each step, batching), ``augment`` (pose noise),
``losses`` (pose and geometry losses), ``objective`` (the loss of one batch, rendering loss
included), ``validate``, ``state`` (checkpoints, RNG state), ``logs`` (log and curves),
``launch`` (several processes, the command line ``python -m flare_nb.train``), ``ablations``.
"""
