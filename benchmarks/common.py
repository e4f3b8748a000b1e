"""What every benchmark shares: percentiles, the DESIGN §4 `result:` line, the
command line (each takes --phones), and the HTTP ones' wrk runs."""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess


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


def median_pair(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """The (ours, reference) pair whose ratio is the median: one noisy run
    on a shared 2-core machine can move either side by half."""
    ranked = sorted(pairs, key=lambda pair: pair[0] / pair[1])
    return ranked[len(ranked) // 2]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_wrk() -> str:
    """wrk's path, installing Debian's package when it is missing."""
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def wrk_rate(args: list[str]) -> float:
    """Run wrk with ``args``; its Requests/sec, after a warning for any non-2xx answer."""
    out = subprocess.run([ensure_wrk(), *args], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        print(f"  warning: {non2xx.group(1)} non-2xx answers", flush=True)
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found, out
    return float(found.group(1))
