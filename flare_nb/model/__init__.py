"""The FLARE network, one module per part of the paper (notebooks 01-05).

``config`` (model sizes), ``rope`` (2D rotary embedding), ``blocks`` (attention blocks),
``encoder`` (``Encoder``: patch tokens, ViT), ``pose_encoding`` (the 9-number pose codec: decode,
encode, move a camera, pose noise), ``pose_predictor`` (``CoarsePosePredictor``, stage 1: coarse
tokens, camera tokens, pose head), ``camera_centric`` (``CameraCentric``, stage 2), ``dpt`` (DPT
heads), ``global_projector`` (``GlobalProjector``, stage 3), ``nvs`` / ``shallow_cnn`` /
``gaussian_head`` (the NVS model's parts), ``flare`` (``FlareModel``: the cascade, one module
per stage), ``checkpoint`` (safe loading of released / trained weights),
``reference`` (deterministic weights and the parity fixtures).
"""
