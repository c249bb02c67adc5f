"""MC-dropout and penultimate features of a network, without changing its weights or BatchNorm.

MC-dropout (Gal & Ghahramani 2016) keeps the network in eval mode (BatchNorm uses its running
statistics) and switches only the dropout layers to train mode, so repeated passes sample
different sub-networks. The project's networks mostly train without dropout (the grading
ResNet has it only when built with `head_dropout` > 0, off in its preset; the detection U-Net
and DenseNet build their `Dropout` layers with p=0), and such a network would give identical
passes and zero uncertainty. Then, and only then, dropout is *injected* at scoring time in
front of the prediction head (the last `Linear`/`Conv` layer): a forward pre-hook applies
`torch.nn.functional.dropout` to the head's input while MC sampling is on. This is dropout
on the penultimate features - the usual "last-layer MC-dropout" - and the scores say which
mode was used (`components["mc_dropout"]`), so nobody mistakes an injected estimate for a
native one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["DEFAULT_INJECTED_P", "McDropout", "find_head", "mc_dropout", "penultimate_features"]

#: Dropout probability injected in front of the head of a network without active dropout.
DEFAULT_INJECTED_P = 0.2

_HEAD_TYPES = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def find_head(module: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The prediction head: the last `Linear`/`ConvNd` registered in the module tree.

    For the project's networks this is `fc` (ResNet), `class_layers.out` (DenseNet), `head`
    (ViT classifier) and the final 1x1x1-equivalent convolution of the U-Net.

    Raises:
        ValueError: the network has no linear or convolution layer.
    """
    head: tuple[str, torch.nn.Module] | None = None
    for name, child in module.named_modules():
        if isinstance(child, _HEAD_TYPES):
            head = (name, child)
    if head is None:
        raise ValueError(f"{type(module).__name__} has no Linear/Conv layer to use as a head")
    return head


def active_dropout_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """Dropout layers with p > 0 (a p=0 layer samples nothing)."""
    return [
        m
        for m in module.modules()
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and float(m.p) > 0.0
    ]


@dataclass
class McDropout:
    """What `mc_dropout` switched on.

    Attributes:
        mode: "native" (the network's own dropout layers) or "injected" (dropout in front of
            the head, added at scoring time).
        layers: number of dropout layers sampling.
        p: dropout probability (injected mode; the native layers' own p otherwise).
        head: name of the head layer (injected mode).
    """

    mode: str
    layers: int
    p: float | list[float]
    head: str = ""
    _handles: list[Any] = field(default_factory=list, repr=False)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for score components."""
        out: dict[str, Any] = {"mode": self.mode, "layers": self.layers, "p": self.p}
        if self.head:
            out["head"] = self.head
        return out


@contextmanager
def mc_dropout(
    module: torch.nn.Module, injected_p: float = DEFAULT_INJECTED_P
) -> Iterator[McDropout]:
    """Within the block, `module` samples with dropout while everything else stays in eval.

    Native dropout layers (p > 0) are put in train mode; without any, dropout with
    `injected_p` is applied to the head's input. On exit the module is back in eval mode and
    any hook is removed.

    Raises:
        ValueError: `injected_p` outside (0, 1), or no head to inject in front of.
    """
    if not 0.0 < injected_p < 1.0:
        raise ValueError(f"injected_p must be in (0, 1), got {injected_p}")
    was_training = module.training
    module.eval()
    native = active_dropout_layers(module)
    if native:
        for layer in native:
            layer.train()
        state = McDropout("native", len(native), sorted({round(float(m.p), 4) for m in native}))
    else:
        name, head = find_head(module)

        def pre_hook(_: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple:
            return (torch.nn.functional.dropout(inputs[0], injected_p, True), *inputs[1:])

        state = McDropout("injected", 1, float(injected_p), head=name)
        state._handles.append(head.register_forward_pre_hook(pre_hook))
    try:
        yield state
    finally:
        for handle in state._handles:
            handle.remove()
        module.train(was_training)


@contextmanager
def penultimate_features(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the head's input on every forward pass inside the block.

    Each entry is the input of one call, reduced to (B, features): spatial dimensions (a
    convolution head) are averaged away. The list is filled as passes run.
    """
    _, head = find_head(module)
    captured: list[torch.Tensor] = []

    def hook(_: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().float()
        captured.append(x.flatten(2).mean(dim=2) if x.ndim > 2 else x)

    handle = head.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
