"""Weight importance scores and exact top-k mask selection (pure functions).

Scores are dicts ``parameter name → tensor of the parameter's shape``; higher means more important. Selection keeps
exactly ``round((1 - sparsity) · n)`` entries, per layer or over all layers together, breaking ties by position so
the asked sparsity is met exactly (not approximately, as a threshold on tied scores would).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

Scores = Mapping[str, torch.Tensor]


def magnitude(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|w| (Han et al., NeurIPS 2015)."""
    return {name: w.detach().abs() for name, w in weights.items()}


def snip(weights: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Connection sensitivity |∂L/∂w ⊙ w| (Lee et al., ICLR 2019, Eq. 6; the normalisation does not change ranks)."""
    return {name: (grads[name] * w.detach()).abs() for name, w in weights.items()}


def random_scores(weights: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Uniform random scores: random pruning as a rank order."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w.shape, generator=generator) for name, w in weights.items()}


def keep_mask(flat_scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Exactly ``keep`` True entries at the largest scores; ties at the threshold go to the earliest positions."""
    scores = flat_scores.float().cpu()
    n = scores.numel()
    if keep <= 0:
        return torch.zeros(n, dtype=torch.bool)
    if keep >= n:
        return torch.ones(n, dtype=torch.bool)
    threshold = torch.kthvalue(scores, n - keep + 1).values  # the keep-th largest score, in O(n)
    mask = scores > threshold
    ties = torch.nonzero(scores == threshold).view(-1)
    mask[ties[: keep - int(mask.sum())]] = True
    return mask


def keep_top(scores: Scores, sparsity: float, scope: Literal["global", "layer"] = "global") -> dict[str, torch.Tensor]:
    """Boolean keep-masks removing exactly ``round(sparsity · n)`` weights, globally or in every layer."""
    if scope == "layer":
        return {name: keep_mask(s.reshape(-1), s.numel() - round(sparsity * s.numel())).view(s.shape)
                for name, s in scores.items()}
    flat = torch.cat([s.reshape(-1).float().cpu() for s in scores.values()])
    mask = keep_mask(flat, flat.numel() - round(sparsity * flat.numel()))
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = mask[offset : offset + s.numel()].view(s.shape)
        offset += s.numel()
    return masks
