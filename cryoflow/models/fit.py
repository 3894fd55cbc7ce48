"""One training loop for the project's small binary classifiers (class averages, particles).

Class-balanced binary cross-entropy (each label weighs half), AdamW (weight decay 1e-3)
with a one-cycle learning-rate schedule, seeded shuffling and augmentation, so the same
data and seed give the same network.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch


def fit_binary(
    make_net: Callable[[], torch.nn.Module],
    x: torch.Tensor,
    y: np.ndarray,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    epochs: int,
    lr: float,
    batch: int,
    seed: int = 0,
    device="cpu",
    log: Callable[[str], None] | None = None,
    every: int = 1,
    name: str = "train",
) -> tuple[torch.nn.Module, list[float]]:
    """Build a network with ``make_net()`` (after seeding, so its initial weights follow the
    seed), train it (logits ``(n,)``) on images ``x`` and 0/1 labels ``y``; returns it (eval
    mode, on ``device``) and the loss per epoch. ``augment(batch, generator)`` makes each
    batch's training view; a line goes to ``log`` every ``every`` epochs and after the last."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = make_net().to(device)
    yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
    pos = float(yt.mean())
    weight = torch.where(yt > 0.5, 0.5 / max(pos, 1e-3), 0.5 / max(1 - pos, 1e-3))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-3)
    steps = epochs * max(1, (len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    losses = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for s in range(0, len(x), batch):
            idx = order[s : s + batch]
            if len(idx) < 2:
                continue
            xb = augment(x[idx], gen).to(device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net(xb), yt[idx].to(device), weight=weight[idx].to(device)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        losses.append(total / max(len(x), 1))
        if log and ((epoch + 1) % every == 0 or epoch == epochs - 1):
            log(f"{name}: epoch {epoch + 1}/{epochs}, loss {losses[-1]:.3f}, {time.perf_counter() - t0:.0f} s")
    net.eval()
    return net, losses
