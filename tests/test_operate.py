"""What the operator runs beside the gateway (issue 16, item 4): the alert
rules pass `promtool check rules` and their own unit tests (`promtool test
rules`), and every metric the alerts and the Grafana dashboard use is one a
running gateway exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import yaml

from gateway.server import Gateway

DEPLOY = Path(__file__).parent.parent / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "gateway.json"
METRIC = re.compile(r"\b(gateway_[a-z0-9_]+)")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise RuntimeError("promtool is missing: apt-get install -y prometheus (.ci/run does)")
    return found


def test_the_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def used_metrics() -> set[str]:
    exprs = [
        rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return {name for expr in exprs for name in METRIC.findall(expr)}


async def test_every_metric_the_alerts_and_dashboard_use_is_exported(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{gateway.http_port}/metrics") as r:
        text = await r.text()
    exported: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE):
        exported.add(name)
        if kind == "counter":
            exported.add(f"{name}_total")
        if kind == "histogram":
            exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    used = used_metrics()
    assert len(used) >= 15
    assert used <= exported, sorted(used - exported)
