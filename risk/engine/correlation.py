"""Correlated groups: assets whose recent returns move together count as one exposure.

For closes ``c_t`` of each asset on a common bar index, the bar log return is ``r_t = ln(c_t / c_{t-1})``.
Over the last ``window`` returns the Pearson correlation ``rho(a, b)`` is measured for every pair of assets;
``a`` and ``b`` are linked when ``rho(a, b) > threshold``, and a group is a connected component of those links
(so A-B and B-C put A, B and C in one group even when A-C is weak). An asset linked to nothing is a group of
its own.

Fail closed: a pair whose correlation cannot be measured (fewer than ``window // 2`` overlapping returns, or a
flat price) is treated as linked, so the tighter group limit applies until the data says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import combinations

import numpy as np
import pandas as pd


@dataclass(frozen=True, slots=True)
class Correlations:
    """The measured correlations (``None``: not measurable) and the groups they form."""

    pairs: Mapping[tuple[str, str], float | None]
    groups: tuple[frozenset[str], ...]

    def correlation(self, a: str, b: str) -> float | None:
        return self.pairs[(a, b)] if (a, b) in self.pairs else self.pairs[(b, a)]

    def group_of(self, symbol: str) -> frozenset[str]:
        return group_of(symbol, self.groups)


def rolling_correlations(closes: pd.DataFrame, *, window: int) -> dict[tuple[str, str], float | None]:
    """``rho(a, b)`` of bar log returns over the last ``window`` rows of returns, for each pair of columns of
    ``closes`` (rows: bars oldest first, a missing close is NaN). ``None`` when not measurable."""
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = np.log(closes.astype(float).where(closes > 0)).diff().iloc[1:].tail(window)
    min_periods = max(window // 2, 2)
    result: dict[tuple[str, str], float | None] = {}
    for a, b in combinations(closes.columns, 2):
        both = returns[[a, b]].dropna()
        if len(both) < min_periods or both[a].std() == 0 or both[b].std() == 0:
            result[(a, b)] = None
            continue
        rho = float(np.corrcoef(both[a].to_numpy(), both[b].to_numpy())[0, 1])
        result[(a, b)] = rho if np.isfinite(rho) else None
    return result


def groups_from(
    symbols: Iterable[str], correlations: Mapping[tuple[str, str], float | None], *, threshold: float
) -> tuple[frozenset[str], ...]:
    """Connected components of the graph linking ``a``-``b`` when ``rho > threshold`` or unmeasurable;
    sorted by their smallest symbol so the answer is deterministic."""
    parent = {symbol: symbol for symbol in symbols}

    def root(symbol: str) -> str:
        while parent[symbol] != symbol:
            parent[symbol] = parent[parent[symbol]]
            symbol = parent[symbol]
        return symbol

    for (a, b), rho in correlations.items():
        if rho is None or rho > threshold:
            parent[root(a)] = root(b)
    components: dict[str, set[str]] = {}
    for symbol in parent:
        components.setdefault(root(symbol), set()).add(symbol)
    return tuple(sorted((frozenset(c) for c in components.values()), key=min))


def correlated_groups(closes: pd.DataFrame, *, window: int, threshold: float) -> Correlations:
    """Measure the correlations of ``closes`` (one column per symbol) and group them."""
    pairs = rolling_correlations(closes, window=window)
    return Correlations(pairs=pairs, groups=groups_from(closes.columns, pairs, threshold=threshold))


def group_of(symbol: str, groups: Iterable[frozenset[str]]) -> frozenset[str]:
    """The group holding ``symbol``; a symbol in no group is a group of its own."""
    return next((group for group in groups if symbol in group), frozenset({symbol}))


def group_exposures(
    exposures: Mapping[str, Decimal], groups: Iterable[frozenset[str]]
) -> dict[frozenset[str], Decimal]:
    """USD exposure of each group: the sum of its members' exposures (symbols in no group stand alone)."""
    totals: dict[frozenset[str], Decimal] = {}
    for symbol, value in exposures.items():
        group = group_of(symbol, groups)
        totals[group] = totals.get(group, Decimal(0)) + value
    return totals
