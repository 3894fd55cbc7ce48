"""Which target to acquire next: predicted quality traded against stage-movement time.

The session is framed as CryoRL frames it: targets (holes) in squares on grids, a cost in
seconds for each step (an exposure within the current square; moving to another square;
moving to another grid) and a reward per exposure (its probability of being good). Under a
time budget the plan maximises expected good exposures.

Rule: the marginal-value theorem of patch foraging, with one square of lookahead.

- ``R*``, the long-run rate (good exposures per second) a session can still expect: from the
  square means seen so far (plus ``prior_squares`` pseudo-squares spread over [0, 1]), the best
  explore-then-commit policy over the unvisited squares (probe ``probe`` holes, commit to the
  square's remaining holes if its mean clears a bar), see :meth:`PlanState.long_run_rate`;
- stay in the current square while its best remaining hole is worth ``p >= R* exposure_s``
  (a new square is always probed ``probe`` times first);
- otherwise go where the rate is highest: a visited square with holes left,
  ``max_k Σ_{top k} p / (move_s + k exposure_s)`` (its ``k`` best holes, paying the move once),
  or the next unvisited square (in the order given, as the operator listed them), worth ``R*``;
- holes predicted below ``min_quality`` are never taken.

:class:`PlanState` holds the targets, what was observed and the predictions; the same
object replays an acquisition online (:mod:`cryoflow.feedback.acquisition`) and writes the
forward plan of ``cryoflow feedback`` (:meth:`PlanState.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryoflow.feedback.spatial import SpatialModel

PRIOR_QUALITIES = (0.1, 0.3, 0.5, 0.7, 0.9)  # the hyper-prior's pseudo-squares: any quality is possible


@dataclass(frozen=True)
class Costs:
    """Seconds per step: an exposure (its hole move by image shift or stage included), a move
    to another square of the same grid (stage move, eucentric height, focus), a move to
    another grid (autoloader exchange and its atlas)."""

    exposure_s: float = 10.0
    square_move_s: float = 60.0
    grid_move_s: float = 600.0

    def move_s(self, grid_from: str | None, grid_to: str, same_square: bool) -> float:
        """Seconds to move before the first exposure in the target's square."""
        if same_square:
            return 0.0
        if grid_from is not None and grid_from != grid_to:
            return self.grid_move_s
        return self.square_move_s


def best_visit(p_desc: np.ndarray, move_s: float, exposure_s: float, max_k: int) -> tuple[float, int]:
    """Best rate (good exposures per second) of a visit taking the top ``k <= max_k`` of ``p_desc``."""
    k = min(len(p_desc), max_k)
    if k <= 0:
        return 0.0, 0
    gain = np.cumsum(p_desc[:k])
    rates = gain / (move_s + exposure_s * np.arange(1, k + 1))
    best = int(np.argmax(rates))
    return float(rates[best]), best + 1


class PlanState:
    """Targets, observations and predictions of one session.

    ``targets``: DataFrame with ``grid``, ``square``, ``hole``, ``x_um``, ``y_um`` (one row per
    hole). Index ``i`` of a target is its row number.
    """

    def __init__(
        self,
        targets: pd.DataFrame,
        model: SpatialModel | None = None,
        costs: Costs | None = None,
        probe: int = 3,
        min_quality: float = 0.0,
        prior_squares: float = 2.0,
    ):
        self.targets = targets.reset_index(drop=True)
        self.model = model or SpatialModel()
        self.costs = costs or Costs()
        self.probe = probe
        self.prior_squares = prior_squares
        self.min_quality = min_quality
        self.xy = self.targets[["x_um", "y_um"]].to_numpy(float)
        self.square_of = self.targets["square"].astype(str).to_numpy()
        self.grid_of = self.targets["grid"].astype(str).to_numpy()
        self.squares = list(dict.fromkeys(self.square_of))
        self.members = {s: np.flatnonzero(self.square_of == s) for s in self.squares}
        self.grid_of_square = {s: self.grid_of[idx[0]] for s, idx in self.members.items()}
        self.remaining = np.ones(len(self.targets), bool)
        self.obs: dict[str, list[tuple[float, float, float]]] = {s: [] for s in self.squares}
        self.p = np.zeros(len(self.targets))
        self.square_mean: dict[str, float] = {}
        self.grid_mean = 0.5
        self.refresh()

    # --- observations and predictions -------------------------------------------------------
    def observe(self, index: int, quality: float, refresh: bool = True) -> None:
        """Target ``index`` was imaged with this quality (P(good) of its micrograph, or the mean over several)."""
        self.remaining[index] = False
        x, y = self.xy[index]
        self.obs[self.square_of[index]].append((x, y, float(quality)))
        if refresh:
            self.refresh()

    def refresh(self) -> None:
        """Recompute the grid mean, every square's mean and every target's prediction."""
        allq = np.array([q for obs in self.obs.values() for _, _, q in obs])
        self.grid_mean = self.model.grid_mean(allq)
        for s, idx in self.members.items():
            obs = np.array(self.obs[s]).reshape(-1, 3)
            mu = self.model.square_mean(obs[:, 2], self.grid_mean)
            self.square_mean[s] = mu
            self.p[idx] = self.model.predict(self.xy[idx], obs[:, :2], obs[:, 2], mu) if len(obs) else mu

    def ranked(self, square: str) -> tuple[np.ndarray, np.ndarray]:
        """Remaining targets of ``square`` (indices) at or above ``min_quality`` and their predictions, best first."""
        idx = self.members[square][self.remaining[self.members[square]]]
        p = self.p[idx]
        keep = p >= self.min_quality
        idx, p = idx[keep], p[keep]
        order = np.argsort(-p, kind="stable")
        return idx[order], p[order]

    def visited(self, square: str) -> bool:
        return len(self.obs[square]) > 0

    def long_run_rate(self) -> float:
        """``R*``: good exposures per second of the best explore-then-commit policy over unvisited squares.

        Square qualities are drawn from the means of the visited squares plus
        ``prior_squares`` pseudo-squares spread evenly over [0, 1] (:data:`PRIOR_QUALITIES`:
        before much is seen, some square may be much better than the ones seen); a new square costs a move and
        ``probe`` exposures; the policy commits to the rest of a square when its mean is at
        least a bar ``θ``, chosen to maximise the rate. 0 when no square is unvisited.
        """
        unvisited = [s for s in self.squares if not self.visited(s) and self.remaining[self.members[s]].any()]
        if not unvisited:
            return 0.0
        c = self.costs
        seen = [self.square_mean[s] for s in self.squares if self.visited(s)]
        means = np.array(seen + list(PRIOR_QUALITIES))
        weights = np.ones(len(means))
        weights[len(seen) :] = self.prior_squares / len(PRIOR_QUALITIES)
        holes = float(np.mean([self.remaining[self.members[s]].sum() for s in unvisited]))
        m = min(self.probe, holes)
        best = 0.0
        for bar in np.unique(means):
            commit = means >= bar
            gain = np.average(m * means + commit * (holes - m) * means, weights=weights)
            time = np.average(c.square_move_s + m * c.exposure_s + commit * (holes - m) * c.exposure_s, weights=weights)
            best = max(best, gain / time)
        return float(best)

    # --- decisions ---------------------------------------------------------------------------
    def next_target(self, current: str | None, time_left_s: float) -> tuple[int, float] | None:
        """The next target and the seconds it costs (move + exposure), or None when nothing fits."""
        c = self.costs
        if time_left_s < c.exposure_s:
            return None
        rate_star = self.long_run_rate()
        if current is not None and current in self.members:
            idx, p = self.ranked(current)
            probing = len(self.obs[current]) < self.probe
            if len(idx) and (probing or p[0] >= rate_star * c.exposure_s):
                return int(idx[0]), c.exposure_s
        grid_now = self.grid_of_square.get(current) if current is not None else None
        best: tuple[float, int, float] | None = None  # (rate, index, seconds)
        for s in self.squares:
            if s == current:
                continue
            idx, p = self.ranked(s)
            if not len(idx):
                continue
            move = c.move_s(grid_now, self.grid_of_square[s], False) if current is not None else 0.0
            max_k = int((time_left_s - move) // c.exposure_s)
            if max_k <= 0:
                continue
            rate = rate_star if not self.visited(s) else best_visit(p, move, c.exposure_s, max_k)[0]
            if best is None or rate > best[0] + 1e-12:
                best = (rate, int(idx[0]), move + c.exposure_s)
        if current is not None and current in self.members:  # nothing better elsewhere: finish here
            idx, p = self.ranked(current)
            if len(idx) and (best is None or p[0] / c.exposure_s >= best[0]):
                return int(idx[0]), c.exposure_s
        return None if best is None else (best[1], best[2])

    def plan(self, current: str | None, budget_s: float) -> pd.DataFrame:
        """The forward plan under ``budget_s`` seconds, predictions held fixed (no new scores).

        One row per planned exposure: ``order``, ``grid``, ``square``, ``hole``, ``x_um``,
        ``y_um``, ``predicted_quality``, ``seconds`` (move + exposure), ``elapsed_s``.
        """
        saved = self.remaining.copy()
        rows, t = [], 0.0
        try:
            while True:
                step = self.next_target(current, budget_s - t)
                if step is None:
                    break
                i, seconds = step
                t += seconds
                self.remaining[i] = False
                current = self.square_of[i]
                row = self.targets.iloc[i]
                rows.append(
                    {
                        "order": len(rows) + 1,
                        "grid": row["grid"],
                        "square": row["square"],
                        "hole": row["hole"],
                        "x_um": row["x_um"],
                        "y_um": row["y_um"],
                        "predicted_quality": round(float(self.p[i]), 4),
                        "seconds": seconds,
                        "elapsed_s": t,
                    }
                )
        finally:
            self.remaining = saved
        columns = ["order", "grid", "square", "hole", "x_um", "y_um", "predicted_quality", "seconds", "elapsed_s"]
        return pd.DataFrame(rows, columns=columns)
