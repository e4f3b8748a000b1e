#!/usr/bin/env bash
# Calls per second: SIPp carrier -> gateway -> SIPp agent, beside the same
# SIPp pair through Kamailio (benchmarks/kamailio.cfg), stepping the rate up.
# Installs what it needs when missing; ends with the DESIGN §4 result line.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v sipp >/dev/null || missing+=(sip-tester)
command -v kamailio >/dev/null || [ -x /usr/sbin/kamailio ] || missing+=(kamailio)
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null
fi
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/sip_cps.py "$@"
