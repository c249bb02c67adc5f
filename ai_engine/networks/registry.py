"""Name -> network builder registry, so a model folder can name its network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}


def register_network(
    name: str,
) -> Callable[[Callable[..., torch.nn.Module]], Callable[..., torch.nn.Module]]:
    """Decorator: register a builder under `name` (a second registration of a name is an error)."""

    def wrap(builder: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"network {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return wrap


def available_networks() -> list[str]:
    """Registered names, sorted."""
    return sorted(_BUILDERS)


def build_network(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build the network registered as `name` with keyword arguments `kwargs`.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown network {name!r}; known: {', '.join(available_networks())}")
    return _BUILDERS[name](**kwargs)
