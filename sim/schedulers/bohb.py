"""BOHB (Falkner et al., ICML 2018): HyperBand's bookkeeping plus a KDE searcher.

"When to stop" is `HyperBand` unchanged; "what to try" is `KDESearcher`, which follows
HpBandSter's ``optimizers/config_generators/bohb.py``:

- Every result is stored per budget (epochs) as (config in the unit cube, score),
  except results on budgets below one that already has a model (never used again).
- A model exists for a budget once it has at least ``min_points_in_model`` results
  (default d + 1). The results are split: the best ``n_good = max(min_points_in_model,
  top_n_percent% of n)`` are "good", the next ``n_bad = max(min_points_in_model,
  (100 - top_n_percent)% of n)`` are "bad" (so with few points they overlap, as in
  HpBandSter). Both sets need more points than dimensions, otherwise there is no model.
- New configurations come from the model of the *largest* budget that has one: draw
  ``num_samples`` candidates from the good KDE, return the one with the largest
  l(x) / g(x) (good density over bad, both floored at 1e-32). A fraction
  ``random_fraction`` of suggestions, and all of them while no model exists, are random.

The KDE is a product kernel written here because scipy's ``gaussian_kde`` is not
mixed-type: Gaussian kernels on the continuous and integer dimensions (both live in [0, 1]
via `SearchSpace.to_unit`) and the Aitchison-Aitken kernel on categorical ones
(``1 - bw`` for the same choice, ``bw / (c - 1)`` for each other one). Bandwidths use the
normal-reference rule of statsmodels' ``KDEMultivariate`` that HpBandSter calls
(``1.06 * std * n**(-1 / (d + 4))``, Scott's rule), floored at ``min_bandwidth``;
categorical bandwidths are capped at (c-1)/c, where the kernel is already uniform.
As in HpBandSter, ``bandwidth_factor`` widens the continuous bandwidths only when
*sampling* candidates (truncated normal around a good point, in [0, 1]); a categorical is
kept with probability 1 - bw, else drawn uniformly. The densities use the unscaled
bandwidths.

Differences from HpBandSter on purpose: scores are "higher is better" (HpBandSter
minimises a loss); a NaN score counts as the worst; failed (dropped) trials are not
observed (HpBandSter records them with loss = inf); all randomness comes from the passed
Generator (HpBandSter uses the global ``np.random`` and scipy's global state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from nasalloc.sim.config import require
from nasalloc.sim.schedulers.base import Searcher
from nasalloc.sim.schedulers.hyperband import HyperBand, HyperBandConfig
from nasalloc.sim.space import Config, SearchSpace


class ProductKDE:
    """A mixed-type Parzen density on unit-cube vectors (see the module docstring)."""

    def __init__(self, data: np.ndarray, levels: list[int], min_bandwidth: float = 1e-3):
        """`levels[j]` is the number of choices of categorical dimension j, 0 if continuous."""
        self.data = np.asarray(data, dtype=float)
        n, d = self.data.shape
        self.levels = list(levels)
        self.categorical = np.array([c > 0 for c in self.levels], dtype=bool)
        std = self.data.std(axis=0, ddof=1) if n > 1 else np.zeros(d)
        bw = 1.06 * std * n ** (-1.0 / (d + 4))
        bw = np.maximum(bw, min_bandwidth)
        for j, c in enumerate(self.levels):
            if c > 1:
                bw[j] = min(bw[j], (c - 1) / c)
        self.bw = bw

    def pdf(self, x: np.ndarray) -> np.ndarray | float:
        """Density at one point (shape (d,)) or at each row of `x` (shape (m, d)).

        The mean over data points of the product of per-dimension kernels.
        """
        x = np.asarray(x, dtype=float)
        points = np.atleast_2d(x)
        k = np.ones((len(points), len(self.data)))
        for j in range(self.data.shape[1]):
            col, h = self.data[None, :, j], self.bw[j]
            xj = points[:, j : j + 1]
            c = self.levels[j]
            if self.categorical[j]:
                if c > 1:  # choice indices are whole numbers: equal means within 1/2
                    k *= np.where(np.abs(col - xj) < 0.5, 1.0 - h, h / (c - 1))
            else:
                k *= np.exp(-0.5 * ((xj - col) / h) ** 2) / (h * math.sqrt(2 * math.pi))
        dens = k.mean(axis=1)
        return float(dens[0]) if x.ndim == 1 else dens

    def sample(self, rng: np.random.Generator, bandwidth_factor: float, n: int = 1) -> np.ndarray:
        """`n` draws (shape (n, d)): random data points, perturbed per dimension (see the
        module docstring).

        Continuous dimensions: a normal around the point truncated to [0, 1], drawn by
        inverting its CDF (exact, and far faster than scipy's ``truncnorm.rvs``); all draws
        at once, because BOHB's candidate sampling is the simulator's hottest loop.
        Categorical dimensions keep the point's value with probability 1 - h, else a
        uniformly drawn choice.
        """
        points = self.data[rng.integers(len(self.data), size=n)]
        u = rng.random(points.shape)
        out = points.copy()
        cont = ~self.categorical
        if cont.any():
            m = points[:, cont]
            h = self.bw[cont] * bandwidth_factor
            lo, hi = ndtr(-m / h), ndtr((1.0 - m) / h)
            out[:, cont] = np.clip(m + h * ndtri(lo + u[:, cont] * (hi - lo)), 0.0, 1.0)
        for j in np.flatnonzero(self.categorical):
            redraw = u[:, j] >= 1.0 - self.bw[j]
            choices = rng.integers(self.levels[j], size=n)
            out[redraw, j] = choices[redraw]
        return out


class KDESearcher(Searcher):
    """BOHB's model-based searcher (HpBandSter semantics; see the module docstring)."""

    def __init__(
        self,
        space: SearchSpace,
        rng: np.random.Generator,
        *,
        min_points_in_model: int | None = None,
        top_n_percent: int = 15,
        num_samples: int = 64,
        random_fraction: float = 1 / 3,
        bandwidth_factor: float = 3.0,
        min_bandwidth: float = 1e-3,
    ):
        self.space = space
        self.rng = rng
        d = len(space)
        self.min_points_in_model = max(d + 1, min_points_in_model or 0)
        self.top_n_percent = top_n_percent
        self.num_samples = num_samples
        self.random_fraction = random_fraction
        self.bandwidth_factor = bandwidth_factor
        self.min_bandwidth = min_bandwidth
        self.levels = [len(dom.choices) if dom.is_categorical else 0 for dom in space.domains]
        self.observations: dict[int, list[tuple[np.ndarray, float]]] = {}
        # budget -> (good, bad); None until `_model` builds it from the budget's observations
        # (a budget that has enough of them has a model; it is built when a suggestion needs it)
        self.models: dict[int, tuple[ProductKDE, ProductKDE] | None] = {}

    def observe(self, config: Config, budget: int, score: float) -> None:
        if self.models and max(self.models) > budget:
            return  # as HpBandSter: once a larger budget has a model, smaller ones are never used
        score = -math.inf if math.isnan(score) else float(score)
        self.observations.setdefault(budget, []).append((self.space.to_unit(config), score))
        self._refit(budget)

    def _split(self, budget: int) -> tuple[int, int]:
        """How many of the budget's observations, best first, go to the good and the bad model."""
        n = len(self.observations[budget])
        n_good = max(self.min_points_in_model, (self.top_n_percent * n) // 100)
        n_bad = max(self.min_points_in_model, ((100 - self.top_n_percent) * n) // 100)
        return min(n_good, n), max(min(n_bad, n - n_good), 0)

    def _refit(self, budget: int) -> None:
        """The budget's model is out of date (HpBandSter refits on every new result). Whether
        it has one follows from the counts alone; the densities are built when `suggest` uses
        them (most results arrive at budgets no suggestion reads before the next result)."""
        d = len(self.space)
        if len(self.observations[budget]) < self.min_points_in_model:
            return
        n_good, n_bad = self._split(budget)
        if n_good <= d or n_bad <= d:
            return
        self.models[budget] = None

    def _model(self, budget: int) -> tuple[ProductKDE, ProductKDE]:
        model = self.models[budget]
        if model is None:
            obs = self.observations[budget]
            order = sorted(range(len(obs)), key=lambda i: -obs[i][1])  # best first; stable on ties
            n_good, n_bad = self._split(budget)
            good = np.array([obs[i][0] for i in order[:n_good]])
            bad = np.array([obs[i][0] for i in order[n_good : n_good + n_bad]])
            model = self.models[budget] = (ProductKDE(good, self.levels, self.min_bandwidth),
                                           ProductKDE(bad, self.levels, self.min_bandwidth))
        return model

    def suggest(self, budget: int) -> Config:
        if not self.models or self.rng.random() < self.random_fraction:
            return self.space.sample(self.rng)
        good, bad = self._model(max(self.models))
        candidates = good.sample(self.rng, self.bandwidth_factor, self.num_samples)
        ratio = np.maximum(good.pdf(candidates), 1e-32) / np.maximum(bad.pdf(candidates), 1e-32)
        return self.space.from_unit(candidates[int(np.argmax(ratio))])  # first maximum on ties


@dataclass
class BohbConfig(HyperBandConfig):
    """conf/scheduler/bohb.yaml (the values and what each means)."""

    min_points_in_model: int  # 0: d + 1 (HpBandSter's default and minimum)
    top_n_percent: int
    num_samples: int
    random_fraction: float
    bandwidth_factor: float
    min_bandwidth: float

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.min_points_in_model >= 0, f"min_points_in_model={self.min_points_in_model}: must be >= 0 (0: d+1)")
        require(1 <= self.top_n_percent <= 99, f"top_n_percent={self.top_n_percent}: must be between 1 and 99")
        require(self.num_samples >= 1, f"num_samples={self.num_samples}: must be >= 1")
        require(0.0 <= self.random_fraction <= 1.0, f"random_fraction={self.random_fraction}: must be between 0 and 1")
        require(self.bandwidth_factor > 0, f"bandwidth_factor={self.bandwidth_factor}: must be > 0")
        require(self.min_bandwidth > 0, f"min_bandwidth={self.min_bandwidth}: must be > 0")


class Bohb(HyperBand):
    name = "bohb"


def make_bohb(cfg: BohbConfig, space: SearchSpace, rng: np.random.Generator) -> Bohb:
    searcher = KDESearcher(
        space,
        rng,
        min_points_in_model=cfg.min_points_in_model or None,
        top_n_percent=cfg.top_n_percent,
        num_samples=cfg.num_samples,
        random_fraction=cfg.random_fraction,
        bandwidth_factor=cfg.bandwidth_factor,
        min_bandwidth=cfg.min_bandwidth,
    )
    return Bohb(cfg, searcher)
