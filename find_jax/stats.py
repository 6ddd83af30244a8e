"""Confidence intervals, the one place they are computed: 95% Student-t intervals of means, Wilson intervals of
proportions (evaluation tables, the shapes study); and the Gaussian noise-stability ceiling of a binary label
(:func:`halfspace_stability`, the shapes study's reference for label stability)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (standard tables).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """``t_{0.975}`` of Student's t with ``df`` degrees of freedom: a table to 30, then the Cornish-Fisher
    expansion ``z + (z^3 + z) / 4df + (5z^5 + 16z^3 + 3z) / 96df^2`` (error < 1e-4 there)."""
    if df < 1:
        raise ValueError(f"df must be >= 1; got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"mean", "lo", "hi", "n"}``: the mean and its 95% t-interval (``lo``/``hi`` None for n < 2)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    n = int(v.size)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": n}
    half = t_quantile_975(n - 1) * float(v.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def mean_ci_tuple(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of :func:`mean_ci` (NaN where undefined)."""
    r = mean_ci(values)
    nan = float("nan")
    return tuple(nan if r[k] is None else float(r[k]) for k in ("mean", "lo", "hi"))  # type: ignore[return-value]


def halfspace_stability(p: float, s: float) -> float:
    """The most stable a yes/no label of x_T can be: ``max P(label(x) == label(x'))`` over all sets of measure
    ``p``, where ``x ~ N(0, I)`` (any dimension) and ``x' = (x + s z) / sqrt(1 + s^2)``, ``z ~ N(0, I)``.

    Borell's noise-stability theorem: half-spaces maximise it. With ``rho = 1 / sqrt(1 + s^2)`` (the correlation
    of x and x' along every direction) and ``t = Phi^-1(p)`` it is ``1 - 2 P(X <= t < Y)`` for a standard
    bivariate normal (X, Y) of correlation rho; ``P(X <= t < Y) = int_{-inf}^t phi(x) Phi((rho x - t) /
    sqrt(1 - rho^2)) dx`` (numerical quadrature). ``p = 1/2`` gives ``1 - arccos(rho) / pi``; ``p`` in {0, 1}
    gives 1. So a prompt aligned on a share p of x_T cannot have label stability above this, whatever the model.
    """
    if not 0.0 <= p <= 1.0 or s < 0:
        raise ValueError(f"need 0 <= p <= 1 and s >= 0; got p={p}, s={s}")
    if p in (0.0, 1.0) or s == 0:
        return 1.0
    from scipy import integrate, special

    rho = 1.0 / math.sqrt(1.0 + s * s)
    t = float(special.ndtri(p))
    sd = math.sqrt(1.0 - rho * rho)

    def f(x):
        return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) * float(special.ndtr((rho * x - t) / sd))

    cross, _ = integrate.quad(f, -math.inf, t, epsabs=1e-12)
    return 1.0 - 2.0 * cross


__all__ = ["halfspace_stability", "mean_ci", "mean_ci_tuple", "t_quantile_975", "wilson"]
