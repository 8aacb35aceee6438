"""Helpers of the notebooks: ``widgets`` and ``gaussian_widgets`` (ipywidgets around tested
callbacks), ``explore`` (the cascade stage by stage), ``pose_explorer`` (move one camera, see
what changes), ``inspection`` (tokens, RoPE, attention), ``record`` (numbers a notebook records
for CI).
"""
