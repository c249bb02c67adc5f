"""Look inside a network: what its submodules put out for one forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def probe_outputs(
    model: torch.nn.Module,
    example: torch.Tensor,
    names: Sequence[str] | None = None,
    keep: Callable[[Any], Any] = lambda out: out,
) -> list[tuple[str, Any]]:
    """`(name, keep(output))` of the named submodules (every named one when None), in the
    order they ran, for one forward pass of `example` without gradients. The forward hooks
    are removed afterwards; `keep` reduces each output (e.g. to its shape) so that the
    feature maps of a whole network are not all held at once."""
    modules = (
        [(n, m) for n, m in model.named_modules() if n]
        if names is None
        else [(n, model.get_submodule(n)) for n in names]
    )
    calls: list[tuple[str, Any]] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: calls.append((name, keep(out))))
        for name, module in modules
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls
