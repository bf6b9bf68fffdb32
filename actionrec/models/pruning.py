"""Structured channel pruning of the backbone with torch-pruning, stored as plain data.

torch-pruning (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023) traces the model
once and groups every layer whose channels must shrink together (a conv, its batch norm, the
residual adds it feeds, the grid pooling and the LSTM's input columns after it); a group's channels
are ranked by the L2 norm of their weights and the weakest removed. The temporal head's own units
are left alone (``ignored_layers``): it is a small share of the compute.

A pruned model is saved as the original architecture (the checkpoint's config) plus the shape
attributes that changed (``out_channels`` of a conv, ``num_features`` of a batch norm, the LSTM's
``input_size``, ...), all ints: the checkpoint still loads with ``torch.load(weights_only=True)``.
``apply_architecture`` rebuilds it: the config's model, those attributes set, the affected
parameters resized, then the weights loaded as usual.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# Module attributes that describe tensor shapes; torch-pruning changes these (and the tensors).
SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features",
               "input_size", "normalized_shape", "num_channels", "feature_dim")


def count_macs(model: nn.Module, example: torch.Tensor) -> tuple[float, int]:
    """(multiply-accumulates of one forward pass on ``example``, parameters), as torch-pruning counts them."""
    import torch_pruning as tp

    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), int(params)


def prune_to_macs(model: nn.Module, example: torch.Tensor, keep: float, *, steps: int = 50,
                  max_ratio: float = 0.9, round_to: int = 1) -> dict:
    """Remove backbone channels (L2-magnitude, dependency-aware) until at most ``keep`` of the MACs remain.

    Args:
        model: a ``CNNLSTM`` (pruned in place; its head is not pruned, only the LSTM inputs follow).
        example: an input clip (1, T, 3, S, S).
        keep: target fraction of the MACs, in (0, 1).
        steps: pruning rounds to ``max_ratio`` of each layer's channels; the loop stops at the first
            round that meets the target, so one round is the granularity (~2 % of the channels).
        round_to: keep channel counts multiples of this (vector-friendly widths for the CPU kernels).

    Returns:
        {'macs_before', 'macs_after', 'params_before', 'params_after', 'steps'}.

    Raises:
        ValueError: ``keep`` out of range, or the target is not reached at ``max_ratio``.
    """
    import torch_pruning as tp

    if not 0 < keep < 1:
        raise ValueError(f"the fraction of FLOPs to keep must be in (0, 1), got {keep}")
    macs0, params0 = count_macs(model, example)
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=max_ratio, iterative_steps=steps, ignored_layers=[model.head],
                                  round_to=round_to if round_to > 1 else None)
    macs, params = macs0, params0
    for step in range(1, steps + 1):
        pruner.step()
        macs, params = count_macs(model, example)
        if macs <= keep * macs0:
            break
    else:
        raise ValueError(f"pruning {max_ratio:.0%} of every layer's channels leaves {macs / macs0:.0%} of the FLOPs, "
                         f"more than the {keep:.0%} asked for")
    with torch.no_grad():  # the head's input width is what the pruned backbone now emits
        model.feature_dim = int(model.frame_features(example[0, :1]).shape[1])
    return {"macs_before": macs0, "macs_after": macs, "params_before": params0, "params_after": params, "steps": step}


def _shape_attrs(module: nn.Module, name: str) -> dict:
    out = {}
    for attr in SHAPE_ATTRS:
        v = getattr(module, attr, None)
        if isinstance(v, bool) or not isinstance(v, (int, tuple)):
            continue
        out[attr] = list(v) if isinstance(v, tuple) else int(v)
    return out


def architecture(model: nn.Module, reference: nn.Module) -> dict[str, dict]:
    """{module name: {shape attribute: value}} where ``model`` differs from ``reference`` (the unpruned
    model its config builds): plain ints and lists, safe for ``weights_only`` loading."""
    ref = dict(reference.named_modules())
    out = {}
    for name, module in model.named_modules():
        mine, theirs = _shape_attrs(module, name), _shape_attrs(ref[name], name) if name in ref else {}
        changed = {k: v for k, v in mine.items() if theirs.get(k) != v}
        if changed:
            out[name] = changed
    return out


def apply_architecture(model: nn.Module, arch: dict[str, dict], state: dict[str, torch.Tensor]) -> nn.Module:
    """Turn the config's model into the pruned one: set ``arch``'s attributes and give the parameters
    and buffers of those modules the shapes ``state`` holds (uninitialised: load ``state`` next).

    Raises:
        ValueError: ``arch`` names a module or attribute the model does not have (another architecture).
    """
    modules = dict(model.named_modules())
    for name, attrs in arch.items():
        if name not in modules:
            raise ValueError(f"pruned architecture names a module the model does not have: {name!r}")
        module = modules[name]
        for attr, value in attrs.items():
            if attr not in SHAPE_ATTRS or not hasattr(module, attr):
                raise ValueError(f"pruned architecture: {name or 'model'} has no shape attribute {attr!r}")
            setattr(module, attr, tuple(value) if isinstance(value, list) else int(value))
        prefix = f"{name}." if name else ""
        for pname, p in list(module.named_parameters(recurse=False)):
            want = state.get(prefix + pname)
            if want is not None and tuple(want.shape) != tuple(p.shape):
                # setattr, not _parameters[...]: nn.LSTM refreshes its flat weight list in __setattr__.
                setattr(module, pname, nn.Parameter(torch.empty(want.shape, dtype=p.dtype), requires_grad=p.requires_grad))
        for bname, b in list(module.named_buffers(recurse=False)):
            want = state.get(prefix + bname)
            if b is not None and want is not None and tuple(want.shape) != tuple(b.shape):
                module._buffers[bname] = torch.empty(want.shape, dtype=b.dtype)
    if getattr(model, "channels_last", False):
        model.backbone.to(memory_format=torch.channels_last)
    return model
