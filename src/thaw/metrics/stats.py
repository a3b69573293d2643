"""Paired comparisons over a few seeds, said as what they can show.

Two strategies trained on the same seeds give one paired difference per seed. From those few numbers:

- the mean difference with a 95% t interval (Student: exact if seed-to-seed differences are normal);
- the standardised effect ``d_z`` = mean / sd of the differences, with the exact 95% interval that
  inverts the noncentral t distribution (Cumming and Finch 2001); with 3-5 seeds it is wide, which is
  the honest answer. A rank-based effect (matched-pairs rank-biserial) takes only n + 1 values on n
  seeds and has no usable interval at n = 3, so it is not used;
- a two-sided paired t-test, and the exact sign-flip permutation test, which needs no normality but
  can never give less than ``2 / 2**n`` (0.25 on 3 seeds, 0.0625 on 5): both are reported, with that
  floor, so neither a tiny t-test p on 3 seeds nor a p of 0 goes unexplained;
- when every seed gives the same difference (sd 0) the t-test is undefined (not p = 0): the p used is
  the sign-flip test's, which is then exactly its floor;
- Holm's step-down correction over a family of comparisons (strong control of the family-wise error
  rate, valid under any dependence between the tests, e.g. several strategies against one reference).

Pure numpy and scipy: no torch, no plotting, nothing from thaw.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95
SAME = 1e-9  # differences closer than this (relative) are the same: 0.82 - 0.80 is not exact in floats
EXACT_UP_TO = 16  # seeds; above that the sign-flip test samples 2**16 sign patterns


@dataclass(frozen=True)
class Paired:
    """``a`` vs ``b`` over the seeds both ran: ``differences`` are a - b, seed by seed."""

    a: str
    b: str
    seeds: list[int]
    differences: list[float]
    mean: float
    sd: float
    ci: tuple[float, float]  # of the mean difference; NaN when it cannot be estimated (n < 2, sd 0)
    d_z: float  # mean / sd: the difference in units of its seed-to-seed sd
    d_z_ci: tuple[float, float]
    p_t: float  # paired t-test, two-sided; NaN when undefined (n < 2, sd 0)
    p_sign_flip: float  # exact sign-flip permutation test, two-sided
    floor: float  # the smallest p the sign-flip test can give on these seeds: 2 / 2**n
    p: float  # the p that is corrected and judged: the t-test's, or the sign-flip's where t is undefined
    test: str  # "paired t" or "sign-flip"
    p_holm: float = math.nan  # ``p`` after Holm's correction over the family it was judged in

    @property
    def n(self) -> int:
        return len(self.seeds)

    def flipped(self) -> Paired:
        """``b`` vs ``a``: the same comparison, differences negated (the p-values do not change)."""
        lo, hi = self.ci
        dlo, dhi = self.d_z_ci
        return replace(
            self,
            a=self.b,
            b=self.a,
            differences=[-x for x in self.differences],
            mean=-self.mean,
            ci=(-hi, -lo),
            d_z=-self.d_z,
            d_z_ci=(-dhi, -dlo),
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "n": self.n, "ci": list(self.ci), "d_z_ci": list(self.d_z_ci)}


def t_interval(d: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The t interval of the mean of ``d``; NaN when there is no spread to scale it by."""
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if not sd > SAME * max(1.0, float(np.abs(d).max())):
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return float(d.mean() - half), float(d.mean() + half)


def d_z_interval(t: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact interval of the standardised mean difference delta from the observed paired t on ``n``
    pairs: the noncentrality parameters whose noncentral t puts ``t`` at the two tail quantiles,
    divided by sqrt(n)."""
    if n < 2 or not math.isfinite(t):
        return math.nan, math.nan
    df = n - 1

    def f(nc: float, q: float) -> float:  # decreasing in nc; scipy gives NaN where it underflows
        cdf = float(stats.nct.cdf(t, df, nc))
        return (cdf if math.isfinite(cdf) else 0.0 if nc > t else 1.0) - q

    def solve(q: float) -> float:
        width = 10.0 + abs(t)
        lo, hi = t - width, t + width
        for _ in range(60):
            if f(lo, q) > 0 > f(hi, q):
                return float(optimize.brentq(f, lo, hi, args=(q,), xtol=1e-10))
            width *= 2
            lo, hi = t - width, t + width
        return math.nan

    root = math.sqrt(n)
    return solve(0.5 + level / 2) / root, solve(0.5 - level / 2) / root


def sign_flip_p(d: np.ndarray, seed: int = 0) -> float:
    """Two-sided p of the exact sign-flip permutation test of mean 0: the share of the 2**n sign patterns
    whose mean is at least as far from 0 as the observed one (under the null, each difference is as
    likely to have come out with the other sign). Exact up to :data:`EXACT_UP_TO` seeds, sampled above."""
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(float(d.mean()))
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= EXACT_UP_TO:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        return float(np.mean(np.abs(signs @ d / n) >= observed - tol))
    signs = np.random.default_rng(seed).choice([-1, 1], size=(2**16, n))
    return float((1 + np.sum(np.abs(signs @ d / n) >= observed - tol)) / (1 + 2**16))


def floor_note(n: int) -> str:
    """What a p at the sign-flip floor means, in words."""
    return f"p >= {2 / 2**n:.3g}: {n} seed{'s' if n != 1 else ''} cannot show more"


def paired(a: str, b: str, xa: dict[int, float], xb: dict[int, float], level: float = LEVEL) -> Paired:
    """Compare ``a`` with ``b`` on the seeds both have (each a mapping seed -> score)."""
    seeds = sorted(set(xa) & set(xb))
    d = np.array([xa[k] - xb[k] for k in seeds], dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and sd <= SAME * max(1.0, float(np.abs(d).max())):  # every seed the same difference
        sd = 0.0
    defined = n > 1 and sd > 0
    t = mean / (sd / math.sqrt(n)) if defined else math.nan
    p_t = float(2 * stats.t.sf(abs(t), n - 1)) if defined else math.nan
    p_flip = sign_flip_p(d)
    return Paired(
        a=a,
        b=b,
        seeds=seeds,
        differences=d.tolist(),
        mean=mean,
        sd=sd,
        ci=t_interval(d, level),
        d_z=mean / sd if defined else math.nan,
        d_z_ci=d_z_interval(t, n, level),
        p_t=p_t,
        p_sign_flip=p_flip,
        floor=2 / 2**n if n else math.nan,
        p=p_t if defined else p_flip,
        test="paired t" if defined else "sign-flip",
    )


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest of m times (m - k + 1),
    made non-decreasing, at most 1. NaN entries (no test) are left out of the family and stay NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), math.nan)
    finite = [i for i in range(len(p)) if math.isfinite(p[i])]
    m, running = len(finite), 0.0
    for rank, i in enumerate(sorted(finite, key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return out.tolist()


def with_holm(comparisons: list[Paired]) -> list[Paired]:
    """The comparisons with ``p_holm`` set, corrected over all of them as one family."""
    adjusted = holm([c.p for c in comparisons])
    return [replace(c, p_holm=q) for c, q in zip(comparisons, adjusted, strict=True)]


class Interval(NamedTuple):
    """Mean, sd and how many values were finite, and the 95% confidence interval of the mean (Student's
    t, n - 1 degrees of freedom); NaN without a finite value."""

    mean: float
    sd: float
    n: int
    low: float
    high: float


def interval(values) -> Interval:
    """The one mean +- sd of thaw's studies: None and NaN left out (a NaN AUC or CKA), sd 0 for one."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return Interval(math.nan, math.nan, 0, math.nan, math.nan)
    mean = statistics.fmean(v)
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    half = 0.0
    if len(v) > 1:
        half = float(stats.t.ppf(0.975, len(v) - 1)) * sd / math.sqrt(len(v))
    return Interval(mean, sd, len(v), mean - half, mean + half)
