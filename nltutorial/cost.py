r"""What a block costs: parameters, FLOPs and the peak memory of its tensors, on any device.

    >>> block = torch.nn.Conv2d(8, 8, 3, padding=1)
    >>> x = torch.randn(1, 8, 16, 16)
    >>> count_parameters(block)
    584
    >>> count_flops(block, x)                 # 2 · 8 · 8 · 9 · 16 · 16
    294912
    >>> peak_memory(block, x)                 # the output, 8 · 16 · 16 float32
    8192

FLOPs
-----
:func:`count_flops` runs the call under ``torch.utils.flop_counter.FlopCounterMode``, which
counts matrix products, convolutions and fused attention (2 FLOPs per multiply-add) and
ignores elementwise work (activations, softmax, pooling, norms). The one addition here:
PyTorch's counter has no formula for the CPU flash-attention kernel
``aten._scaled_dot_product_flash_attention_for_cpu`` (what
``F.scaled_dot_product_attention`` runs on a CPU), so attention computed that way would
count as 0 FLOPs; it is given the counter's own formula for the other SDPA kernels.

Peak memory
-----------
A CPU has no allocator statistics like ``torch.cuda.max_memory_allocated``.
:func:`peak_memory` therefore watches the call with a ``TorchDispatchMode``: every ATen
operator's output that lives in a *new* storage (not a view or an in-place result of one of
the operator's inputs) adds its ``nbytes`` to a running total, and a ``weakref.finalize``
on that storage subtracts them when the storage is freed. The peak of the total is the
largest amount of tensor memory the call had allocated at one time: intermediates and
outputs, not the inputs or parameters that existed before, and not the private scratch
buffers a kernel may allocate and free inside one operator. The count is exact and the
same on every machine for a given PyTorch version (it depends on which operators the
call decomposes into, not on timing).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Union

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["count_flops", "count_parameters", "peak_memory"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_flop_formulas() -> dict:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: _sdpa_cpu_flops}





def count_flops(fn: Union[nn.Module, Callable[..., Any]], *args, **kwargs) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)`` (a module or any function), 2 per multiply-add.

    Counts what ``FlopCounterMode`` counts (matrix products, convolutions, attention), plus
    the CPU flash-attention kernel, under ``torch.inference_mode()`` when no argument needs a
    gradient. Elementwise operations are not counted. Attention modules left at
    ``implementation="auto"`` are counted on their explicit path
    (:func:`nltutorial.nonlocal_block.explicit_auto`): the FLOPs of the formula, the same
    whichever path the dispatch would take; a module set to "fast" is counted as it runs.
    """
    from .nonlocal_block import explicit_auto

    needs_grad = any(isinstance(a, torch.Tensor) and a.requires_grad for a in tree_flatten((args, kwargs))[0])
    counter = FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas())
    with explicit_auto(), counter, (torch.enable_grad() if needs_grad else torch.inference_mode()):
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


class _StorageTracker(TorchDispatchMode):
    """Adds the bytes of every new output storage, subtracts them when the storage dies."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live = set()

    def _free(self, key: int, nbytes: int) -> None:
        if key in self._live:
            self._live.discard(key)
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and not t.is_meta}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.is_meta:
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._live:
                continue                                  # a view or an in-place result: no new memory
            nbytes = storage.nbytes()
            self._live.add(key)
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key, nbytes)
        return out


def peak_memory(fn: Union[nn.Module, Callable[..., Any]], *args, **kwargs) -> int:
    """Peak bytes of tensor memory allocated during one call ``fn(*args, **kwargs)``.

    Outputs and intermediates count, pre-existing inputs and parameters do not; see the
    module docstring for how it is measured. The call runs under ``torch.inference_mode()``
    unless an argument needs a gradient. Works on any device (the bytes of all devices are
    summed).
    """
    needs_grad = any(isinstance(a, torch.Tensor) and a.requires_grad for a in tree_flatten((args, kwargs))[0])
    tracker = _StorageTracker()
    with tracker, (torch.enable_grad() if needs_grad else torch.inference_mode()):
        out = fn(*args, **kwargs)
    del out
    return tracker.peak
