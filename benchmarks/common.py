"""What every benchmark shares: percentiles, the DESIGN §4 `result:` line, and
the command line (each takes --phones)."""

from __future__ import annotations

import argparse


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` by nearest rank (NaN for none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def result_line(name: str, metric: float, reference: float, **more: float | int) -> str:
    """``result: NAME metric=VALUE reference=VALUE ratio=VALUE [more=VALUE ...]``,
    where ratio is ours over the reference (DESIGN §4)."""
    ratio = metric / reference if reference else float("inf")
    extra = "".join(f" {key}={_fmt(value)}" for key, value in more.items())
    return f"result: {name} metric={_fmt(metric)} reference={_fmt(reference)} ratio={ratio:.2f}{extra}"


def phones_argument(doc: str | None, default: int = 1_000_000) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phones", type=int, default=default, help="how many (phones, or leads)")
    phones: int = parser.parse_args().phones
    return phones


def _fmt(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.3f}"
