"""Positive-unlabelled loss: non-negative PU risk (Kiryo et al., NeurIPS 2017), as Topaz offers.

Picking has no negative labels: only some particles are known (confident picks, or
particles of good 2D classes); every other location is *unlabelled*, a mixture with a
known share ``prior`` of particles. The classification risk is estimated without
negatives as::

    R = prior · E_P[l(f, +1)] + max(0, E_U[l(f, -1)] - prior · E_P[l(f, -1)])

``E_U[l(f, -1)] - prior · E_P[l(f, -1)]`` is the risk on the negatives alone; it cannot be
negative, and a flexible model that drives it below zero is memorising the unlabelled
positives, so it is clamped (nnPU; Topaz's GE-binomial instead pins the unlabelled mean
prediction to ``prior``). Locations known *not* to be particle centres (a labelled-negative
set: positions off a particle's centre, picks on contamination) add an ordinary
``E_N[l(f, -1)]`` term. ``l`` is the logistic loss (softplus), ``f`` the logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nnpu_loss(
    positive: torch.Tensor,
    unlabelled: torch.Tensor,
    prior: float,
    negative: torch.Tensor | None = None,
    negative_weight: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """``(loss to minimise, negative-risk estimate)`` from logits of labelled positives ``(p,)``,
    unlabelled samples ``(u,)`` (share ``prior`` of them positive, 0 < prior < 1) and
    optional labelled negatives ``(n,)``.

    When the negative-risk estimate is below zero the returned loss is its negation (the
    nnPU gradient step that pushes it back up), so minimising still makes sense.
    """
    pos_risk = prior * F.softplus(-positive).mean()
    neg_risk = F.softplus(unlabelled).mean() - prior * F.softplus(positive).mean()
    extra = negative_weight * F.softplus(negative).mean() if negative is not None and len(negative) else 0.0
    risk = neg_risk.item()
    if risk < 0:
        return -neg_risk + extra, risk
    return pos_risk + neg_risk + extra, risk
