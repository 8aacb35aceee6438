"""bfloat16 weights (``flare-nb --dtype bf16``): half the weight memory of the released model.

On CUDA the model simply holds bf16 parameters (the forward already runs under bf16 autocast).
On a CPU, bf16 matrix products are only fast on processors with bfloat16 instructions; without
them they run tens of times slower than float32 (``flare-nb plan --dtype bf16`` measures it).
So on the CPU :func:`to_bf16_weights` STORES every parameter in bf16 and each module computes in
float32: a forward pre-hook widens that module's own parameters to float32 just before it runs
and a forward hook puts the bf16 copies back right after. The float32 copy of one module at a
time is all that is added to the bf16 weights; the numbers differ from float32 by the rounding
of the weights to bf16 only (8 significant bits), which ``benchmarks/bench_bf16.py`` measures
on the parity fixtures.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["to_bf16_weights", "is_bf16_weights"]


#: modules whose forward reads their children's parameters directly (not through the child's
#: forward): widened as a whole
_WHOLE = (nn.MultiheadAttention,)


def _own(module: nn.Module):
    return list(module.named_parameters(recurse=isinstance(module, _WHOLE)))


def _widen(module: nn.Module, inputs):
    params = _own(module)
    if params and params[0][1].dtype == torch.bfloat16:
        module._bf16_store = {n: p.data for n, p in params}
        for _, p in params:
            p.data = p.data.float()


def _narrow(module: nn.Module, inputs, output):
    store = module.__dict__.pop("_bf16_store", None)
    if store:
        for n, p in _own(module):
            p.data = store[n]


def to_bf16_weights(model: nn.Module, compute_float32: bool = True) -> nn.Module:
    """Round ``model``'s parameters to bfloat16 in place (buffers stay as they are) and, with
    ``compute_float32`` (the CPU choice), make each module compute in float32 (module
    docstring). Returns ``model``; ``is_bf16_weights(model)`` is then True."""
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    if compute_float32:
        inside = {id(c) for m in model.modules() if isinstance(m, _WHOLE) for c in m.modules() if c is not m}
        for m in model.modules():
            if id(m) not in inside and _own(m):
                m.register_forward_pre_hook(_widen)
                m.register_forward_hook(_narrow)
    model.bf16_weights = "float32 compute" if compute_float32 else "bf16 compute"
    return model


def is_bf16_weights(model: nn.Module) -> bool:
    return bool(getattr(model, "bf16_weights", None))
