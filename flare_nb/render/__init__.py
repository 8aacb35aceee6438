"""Rendering Gaussians in our camera conventions (notebook 05).

``rasterize`` (gsplat on CUDA, our tile rasterizer on the CPU), ``splats`` (pointmap to
Gaussians, the one renderer of our cameras, fitting), ``targets`` (cameras in the prediction
frame, rendering a prediction into ground-truth cameras), ``ply`` (3DGS and point-cloud PLY
files), ``losses`` (MSE, SSIM, depth and perceptual losses).
"""
