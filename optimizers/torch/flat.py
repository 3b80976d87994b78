"""Parameter lists as one flat vector: curvature methods solve their linear systems there."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Views of ``vector`` shaped like ``like`` (no copy)."""
    sizes = [t.numel() for t in like]
    return tuple(v.view_as(t) for v, t in zip(vector.split(sizes), like, strict=True))


@torch.no_grad()
def assign(params: Sequence[Tensor], vector: Tensor) -> None:
    """Copy ``vector`` into ``params`` in place (exactly: a rejected step restores bit for bit)."""
    for p, v in zip(params, unflatten(vector, params), strict=True):
        p.copy_(v)
