"""Evaluation (notebook 07): ``metrics`` (pose AUC / RRA / RTA, pointclouds, PSNR / SSIM /
LPIPS), ``baselines`` (COLMAP through pycolmap), ``evaluate`` (pose protocols and tables),
``nvs_eval`` (novel-view synthesis), ``report`` (a checkpoint's evaluation report). Nothing
here imports the trainer.
"""
