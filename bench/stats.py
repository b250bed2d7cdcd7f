"""Small statistics shared by the benchmarks."""


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile of ``values`` (0.0 for no values)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))] if ordered else 0.0
