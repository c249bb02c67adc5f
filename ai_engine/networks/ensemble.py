"""An ensemble of trained networks that averages their probabilities, as one module.

Independently trained networks err in different places; the mean of their probabilities
ranks better than either (the usual last step of detection challenge entries: nnU-Net's and
nnDetection's fold ensembles). The ensemble is an ordinary `torch.nn.Module` whose output has
the members' form, so whatever runs one network (sliding-window inference, the
false-positive classifier, export) runs the ensemble unchanged:

- `output="softmax"`: members give class logits (dim 1); the ensemble gives log of the mean
  softmax, whose softmax is that mean.
- `output="sigmoid"`: members give logits; the ensemble gives the logit of the mean sigmoid.

A model folder stores it as one state dict (`members.0.*`, `members.1.*`, ...) under the
network name `mean_ensemble`, with each member's network name and arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ai_engine.networks.registry import build_network, register_network

__all__ = ["MeanEnsemble", "mean_ensemble"]

OUTPUTS = ("softmax", "sigmoid")
#: probabilities are kept this far from 0 and 1 before the log / logit
_EPS = 1e-7


class MeanEnsemble(torch.nn.Module):
    """The mean of `members`' probabilities, returned in the members' logit form.

    Args:
        members: the networks, each mapping the same input to the same output shape.
        output: "softmax" (class logits on dim 1) or "sigmoid" (independent logits).
    """

    def __init__(self, members: Sequence[torch.nn.Module], output: str) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"ensemble output {output!r} is not one of {OUTPUTS}")
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = torch.nn.ModuleList(members)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "softmax":
            p = sum(torch.softmax(m(x).float(), dim=1) for m in self.members)
            return torch.log((p / len(self.members)).clamp_min(_EPS))
        q = sum(torch.sigmoid(m(x).float()) for m in self.members) / len(self.members)
        q = q.clamp(_EPS, 1 - _EPS)
        return torch.log(q) - torch.log1p(-q)


@register_network("mean_ensemble")
def mean_ensemble(members: Sequence[Mapping[str, Any]], output: str) -> MeanEnsemble:
    """Build an ensemble from its members' network names and arguments.

    Args:
        members: `[{"name": "unet3d", "kwargs": {...}}, ...]`, as a model folder names them.
        output: "softmax" or "sigmoid" (see `MeanEnsemble`).

    Raises:
        ValueError: fewer than two members, a member without a name, or an unknown output.
    """
    built = []
    for i, spec in enumerate(members):
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"ensemble member {i} names no network: {spec!r}")
        built.append(build_network(spec["name"], **dict(spec.get("kwargs") or {})))
    return MeanEnsemble(built, output)
