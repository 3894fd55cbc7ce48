"""Which target to acquire next: predicted quality traded against stage-movement time.

The session is framed as CryoRL frames it: targets (holes) in squares on grids, a cost in
seconds for each step (an exposure within the current square; moving to another square;
moving to another grid) and a reward per exposure (its probability of being good). Under a
time budget the plan maximises expected good exposures.

Rule: the marginal-value theorem of patch foraging, with one square of lookahead and a
Bayesian belief over each square's good fraction (:mod:`cryoflow.feedback.belief`).

- ``R*``, the long-run rate (good exposures per second) a session can still expect: with
  square qualities drawn from the belief's prior (the squares seen so far plus
  ``prior_squares`` pseudo-squares spread over [0, 1]), the best explore-then-commit policy
  over the unvisited squares (probe ``probe`` holes, commit to the square's remaining holes if
  its quality clears a bar ``θ``), see :meth:`PlanState.long_run_rate`;
- stay in the current square while its best remaining hole is worth ``p >= R* exposure_s``;
  a new square gets one exposure, then up to ``probe`` while one more probe is worth its
  time (value of information, :meth:`PlanState._probe_worth`: a square whose first holes are
  clearly bad is left after one or two, a promising one is probed further after an unlucky
  hole); ``R*`` here is at least the best revisit of another visited square, so a square is
  not exhausted while a better one has holes left;
- otherwise go where the rate is highest: a visited square with holes left,
  ``max_k Σ_{top k} p / (move_s + k exposure_s)`` (its ``k`` best holes, paying the move once),
  or an unvisited square, worth its own explore-then-commit rate (its prior leans on the
  squares near it: blotting leaves gradients across the grid);
- within a square the holes go best prediction first, the one nearest the centre among
  equals (ice thickens towards the grid bars); holes predicted below ``min_quality`` are
  never taken.

Measured (``cryoflow bench feedback --seeds 10``, 24 squares x 60 holes, 2 h): plan / in
order 1.23 (well blotted), 1.55 (typical) in good micrographs per hour (mean over seeds);
an oracle that knows every square's good fraction gets 1.38 and 1.78: the gap is the moves
and probes spent finding the good squares, which no score of the imaged holes avoids.

:class:`PlanState` holds the targets, what was observed and the predictions; the same
object replays an acquisition online (:mod:`cryoflow.feedback.acquisition`) and writes the
forward plan of ``cryoflow feedback`` (:meth:`PlanState.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryoflow.feedback import belief
from cryoflow.feedback.spatial import SpatialModel


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
    hole; positions may be NaN). Index ``i`` of a target is its row number.

    Per square, a belief over its good fraction (:mod:`cryoflow.feedback.belief`: prior from
    the squares seen, nearby ones weighted up by ``neighbour_um``; posterior from its own
    holes' scores) gives its mean ``square_mean``; per hole, the prediction is that mean plus
    the spatial model's smoothing of the square's imaged holes
    (:class:`~cryoflow.feedback.spatial.SpatialModel`). Among equal predictions the hole
    nearest the square's centre comes first (ice thickens towards the grid bars).
    """

    def __init__(
        self,
        targets: pd.DataFrame,
        model: SpatialModel | None = None,
        costs: Costs | None = None,
        probe: int = 3,
        min_quality: float = 0.0,
        prior_squares: float = 2.0,
        commit_prob: float = 1.0,
        neighbour_um: float = 250.0,
    ):
        self.targets = targets.reset_index(drop=True)
        self.model = model or SpatialModel()
        self.costs = costs or Costs()
        self.probe = probe
        self.prior_squares = prior_squares
        self.min_quality = min_quality
        self.commit_prob = commit_prob
        self.neighbour_um = neighbour_um
        self.xy = self.targets[["x_um", "y_um"]].to_numpy(float)
        self.square_of = self.targets["square"].astype(str).to_numpy()
        self.grid_of = self.targets["grid"].astype(str).to_numpy()
        self.squares = list(dict.fromkeys(self.square_of))
        self.members = {s: np.flatnonzero(self.square_of == s) for s in self.squares}
        self.grid_of_square = {s: self.grid_of[idx[0]] for s, idx in self.members.items()}
        self.centre = {s: _nanmean_xy(self.xy[idx]) for s, idx in self.members.items()}
        self.r2 = np.zeros(len(self.targets))
        for s, idx in self.members.items():
            d2 = np.nan_to_num(((self.xy[idx] - self.centre[s]) ** 2).sum(1), nan=0.0)
            self.r2[idx] = d2 / d2.max() if d2.max() > 0 else 0.0
        self.remaining = np.ones(len(self.targets), bool)
        self.obs: dict[str, list[tuple[float, float, float]]] = {s: [] for s in self.squares}
        self.obs_index: dict[str, list[int]] = {s: [] for s in self.squares}
        self.p = np.zeros(len(self.targets))
        self.square_mean: dict[str, float] = {}
        self.belief: dict[str, np.ndarray] = {}
        self.grid_mean = 0.5
        self.refresh()

    # --- observations and predictions -------------------------------------------------------
    def observe(self, index: int, quality: float, refresh: bool = True) -> None:
        """Target ``index`` was imaged with this quality (P(good) of its micrograph, or the mean over several)."""
        self.remaining[index] = False
        x, y = self.xy[index]
        self.obs[self.square_of[index]].append((x, y, float(quality)))
        self.obs_index[self.square_of[index]].append(int(index))
        if refresh:
            self.refresh()

    def _seen(self) -> tuple[list[str], np.ndarray]:
        """Visited squares and their estimated good fraction (their mean score, one pseudo-hole at the grid mean)."""
        seen = [s for s in self.squares if self.obs[s]]
        est = np.array([(sum(q for _, _, q in self.obs[s]) + self.grid_mean) / (len(self.obs[s]) + 1) for s in seen])
        return seen, est

    def square_prior(self, square: str) -> np.ndarray:
        """Prior over :data:`~cryoflow.feedback.belief.Q` of ``square`` from the other visited squares."""
        seen, est = self._seen()
        keep = [i for i, s in enumerate(seen) if s != square]
        if not keep:
            return belief.prior(np.zeros(0), pseudo=self.prior_squares)
        xy = np.array([self.centre[seen[i]] for i in keep])
        w = 1.0 + belief.neighbour_weights(self.centre[square], xy, self.neighbour_um)
        return belief.prior(est[keep], w, pseudo=self.prior_squares)

    def refresh(self) -> None:
        """Recompute the grid mean, every square's belief and mean, and every target's prediction."""
        allq = np.array([q for obs in self.obs.values() for _, _, q in obs])
        self.grid_mean = self.model.grid_mean(allq)
        for s, idx in self.members.items():
            obs_idx = np.array(self.obs_index[s], dtype=int)
            values = np.array([q for _, _, q in self.obs[s]])
            post = belief.posterior(self.square_prior(s), values)
            self.belief[s] = post
            mu = float(post @ belief.Q)
            self.square_mean[s] = mu
            if len(obs_idx):
                self.p[idx] = self.model.predict(self.xy[idx], self.xy[obs_idx], values, mu)
            else:
                self.p[idx] = mu

    def ranked(self, square: str) -> tuple[np.ndarray, np.ndarray]:
        """Remaining targets of ``square`` (indices) at or above ``min_quality`` and their predictions, best first."""
        idx = self.members[square][self.remaining[self.members[square]]]
        p = self.p[idx]
        keep = p >= self.min_quality
        idx, p = idx[keep], p[keep]
        order = np.lexsort((self.r2[idx], -np.round(p, 9)))
        return idx[order], p[order]

    def visited(self, square: str) -> bool:
        return len(self.obs[square]) > 0

    def long_run_rate(self, square: str | None = None) -> float:
        """``R*``: good exposures per second of the best explore-then-commit policy over unvisited squares.

        A new square's good fraction follows its prior (:meth:`square_prior`; with no
        ``square`` given, the prior without neighbours: any square of the grid); a new
        square costs a move and ``probe`` exposures; the policy commits to the rest of a
        square when its good fraction is at least a bar ``θ``, chosen to maximise the rate.
        0 when no square is unvisited.
        """
        return self._explore_commit(square)[0]

    def _explore_commit(self, square: str | None = None) -> tuple[float, float]:
        """``(R*, θ)`` of :meth:`long_run_rate`."""
        unvisited = [s for s in self.squares if not self.visited(s) and self.remaining[self.members[s]].any()]
        if not unvisited:
            return 0.0, 1.0
        c = self.costs
        if square is None:
            _, est = self._seen()
            pi = belief.prior(est, pseudo=self.prior_squares)
        else:
            pi = self.square_prior(square)
        holes = float(np.mean([self.remaining[self.members[s]].sum() for s in unvisited]))
        m = min(self.probe, holes)
        best, bar = 0.0, 1.0
        for theta in belief.Q:
            commit = belief.Q >= theta
            gain = pi @ (m * belief.Q + commit * (holes - m) * belief.Q)
            time = pi @ (c.square_move_s + m * c.exposure_s + commit * (holes - m) * c.exposure_s)
            if gain / time > best:
                best, bar = float(gain / time), float(theta)
        return best, bar

    # --- decisions ---------------------------------------------------------------------------
    def next_target(self, current: str | None, time_left_s: float) -> tuple[int, float] | None:
        """The next target and the seconds it costs (move + exposure), or None when nothing fits.

        Stay in the current square while its best remaining hole is worth ``p >= R* exposure_s``
        (``R*``: the larger of exploring new squares and the best revisit of another one), or
        while it is still being probed (fewer than ``probe`` holes imaged) and one more probe
        is worth its time (:meth:`_probe_worth`; a new square gets at least one exposure). Otherwise go where the rate is highest: a
        visited square's best visit, or an unvisited square's own explore-then-commit rate
        (its prior leans on its neighbours).
        """
        c = self.costs
        if time_left_s < c.exposure_s:
            return None
        rate_star, bar = self._explore_commit()
        if current is not None and current in self.members:
            # the environment's rate: exploring new squares, or the best revisit of another square
            rate_star = max(rate_star, self._best_revisit(current, time_left_s))
            idx, p = self.ranked(current)
            n = len(self.obs[current])
            if len(idx) and (n == 0 or p[0] >= rate_star * c.exposure_s):
                return int(idx[0]), c.exposure_s
            if len(idx) and n < self.probe and self._probe_worth(current, len(idx), rate_star, bar):
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
            rate = self.long_run_rate(s) if not self.visited(s) else best_visit(p, move, c.exposure_s, max_k)[0]
            if best is None or rate > best[0] + 1e-12:
                best = (rate, int(idx[0]), move + c.exposure_s)
        if current is not None and current in self.members:  # nothing better elsewhere: finish here
            idx, p = self.ranked(current)
            if len(idx) and (best is None or p[0] / c.exposure_s >= best[0]):
                return int(idx[0]), c.exposure_s
        return None if best is None else (best[1], best[2])

    def _best_revisit(self, current: str, time_left_s: float) -> float:
        """Best rate (good per second) of moving to another visited square with holes left, 0 if none."""
        c = self.costs
        best = 0.0
        for s in self.squares:
            if s == current or not self.visited(s):
                continue
            idx, p = self.ranked(s)
            move = c.move_s(self.grid_of_square[current], self.grid_of_square[s], False)
            max_k = int((time_left_s - move) // c.exposure_s)
            if len(idx) and max_k > 0:
                best = max(best, best_visit(p, move, c.exposure_s, max_k)[0])
        return best

    def _probe_worth(self, square: str, holes_left: int, rate_star: float, bar: float) -> bool:
        """Value of information: is one more probe of ``square`` worth its time?

        Worth it when ``commit_prob`` times the expected surplus of committing to the square,
        should it clear the bar ``θ`` (``holes_left · Σ_{q ≥ θ} π(q) (q - R* exposure_s)``
        under the posterior ``π``), is at least the probe's net cost (``R* exposure_s``
        forgone minus its own expected yield ``E[q]``). A promising square is probed further
        after an unlucky first hole; one whose first holes are clearly bad is left.
        """
        post = self.belief[square]
        q = belief.Q
        above = q >= bar
        reward = rate_star * self.costs.exposure_s
        surplus = holes_left * float((post[above] * (q[above] - reward)).sum())
        cost = reward - float(post @ q)
        return surplus * self.commit_prob >= cost

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


def _nanmean_xy(xy: np.ndarray) -> np.ndarray:
    """Mean of the finite rows of ``xy`` ``(N, 2)``; NaN where none is finite."""
    ok = np.isfinite(xy).all(1)
    return xy[ok].mean(0) if ok.any() else np.array([np.nan, np.nan])
