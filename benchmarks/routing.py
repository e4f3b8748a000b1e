"""Routing decision benchmark (issue 3): the cost of one R1-R6 decision.

Indexes 1,000,000 lead phones across 1,000 accounts (10% of phone numbers
shared by two or three leads, so R2/R3 are exercised), one company number
per account, and times ``route()`` per call for a mix of callers (90% known
leads, 10% unknown callers on ring_all/sequential/user routes), beside a bare
``dict.get`` on the same data timed the same way.

Targets (reported, not asserted): decision p99 <= 20 us and <= 20x the bare
lookup. Run: ``python benchmarks/routing.py [--phones N]``. Pure CPU; no database.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import percentile, phones_argument, result_line
from gateway.domain.index import Index, LeadRef, Number, User, phone_key
from gateway.domain.routing import route

ACCOUNTS = 1_000
AGENTS = 6
PROBES = 200_000


def build(phones: int, rng: random.Random) -> tuple[Index, dict[tuple[int, str], object], list[Number]]:
    index = Index()
    numbers = []
    uid = 0
    for account in range(1, ACCOUNTS + 1):
        users = []
        for i in range(AGENTS):
            uid += 1
            package = "none" if i == AGENTS - 1 else "standard"  # some agents trigger R6
            index.put_user(User(uid, account, "agent", package, frozenset(), None, None))  # type: ignore[arg-type]
            users.append(uid)
        route_kind = ("user", "ring_all", "sequential")[account % 3]
        number = Number(
            account,
            account,
            f"+1800{account:07d}",
            "company",
            None,
            None,
            route_kind,  # type: ignore[arg-type]
            tuple(users[:3]),
            15,
            "Web",
            "web",
            50,
            "twilio",
        )
        index.put_number(number)
        numbers.append(number)
    bare: dict[tuple[int, str], object] = {}
    lead_id = 0
    made = 0
    while made < phones:
        account = rng.randrange(1, ACCOUNTS + 1)
        phone = f"+1{2_000_000_000 + made}"
        owners = 1 if rng.random() >= 0.10 else rng.choice((2, 3))  # 10% duplicated numbers
        for _ in range(owners):
            lead_id += 1
            agent = (account - 1) * AGENTS + 1 + rng.randrange(AGENTS)
            ref = LeadRef(lead_id, agent, rng.uniform(1.5e9, 1.8e9))
            index.load_lead_phone(account, phone_key(phone), ref)
            bare[(account, phone)] = ref
            made += 1
    return index, bare, numbers


def main(phones: int) -> None:
    rng = random.Random(3)
    started = time.perf_counter()
    index, bare, numbers = build(phones, rng)
    keys = list(bare)
    print(
        f"indexed {index.size().lead_phones:,} lead phones in {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    probes = []
    for _ in range(PROBES):
        if rng.random() < 0.9:
            account, phone = rng.choice(keys)
        else:
            account, phone = rng.randrange(1, ACCOUNTS + 1), f"+1{9_000_000_000 + rng.randrange(10**6)}"
        probes.append((numbers[account - 1], account, phone))
    gc.collect()
    gc.freeze()
    clock = time.perf_counter_ns
    ours, reference = [], []
    reasons: dict[str, int] = {}
    get = bare.get
    for num, account, phone in probes:
        t0 = clock()
        decision = route(index, num, phone)
        t1 = clock()
        get((account, phone))
        t2 = clock()
        ours.append(t1 - t0)
        reference.append(t2 - t1)
        reasons[decision.reason] = reasons.get(decision.reason, 0) + 1

    p50, p99 = int(percentile(ours, 0.5)), int(percentile(ours, 0.99))
    r50, r99 = int(percentile(reference, 0.5)), int(percentile(reference, 0.99))
    print("reasons: " + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())))
    print(f"decision: p50 {p50} ns, p99 {p99} ns; bare dict.get: p50 {r50} ns, p99 {r99} ns")
    print(
        result_line(
            "routing",
            p99,
            r99,
            p50_ns=p50,
            ref_p50_ns=r50,
            ratio_p50=p50 / r50,
            phones=index.size().lead_phones,
        )
    )


if __name__ == "__main__":
    main(phones_argument(__doc__))
