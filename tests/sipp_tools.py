"""Run real SIPp processes (the `sip-tester` package) as carrier trunks and
agents' phones, on loopback addresses, and read their call statistics."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).parent / "sipp"
CARRIER_IP = "127.0.0.2"  # the gateway trusts this address as a trunk
PHONE_IP = "127.0.0.1"
TRUNK_IP = "127.0.0.3"  # the outbound trunk


def sipp_binary() -> str:
    found = shutil.which("sipp")
    if found is None:
        raise RuntimeError("sipp is missing: apt-get install -y sip-tester")
    return found


def free_port(ip: str) -> int:
    """A UDP port free on ``ip`` whose TCP twin is free too (SIPp binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((ip, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((ip, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


@dataclass
class Sipp:
    name: str
    process: asyncio.subprocess.Process
    workdir: Path
    port: int

    async def wait(self, limit_s: float = 30.0) -> int:
        """The exit code (0: every call succeeded, 1: some failed)."""
        try:
            return await asyncio.wait_for(self.process.wait(), limit_s)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(
                f"sipp {self.name} still running after {limit_s}s:\n{self.errors()}"
            ) from None

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()

    def counts(self) -> dict[str, int]:
        """Cumulative counters from SIPp's statistics file (last row)."""
        files = sorted(self.workdir.glob("*_.csv")) + sorted(self.workdir.glob("*.csv"))
        stat = [f for f in files if f.name.startswith("stat")]
        if not stat:
            return {}
        rows = list(csv.reader(stat[0].read_text().splitlines(), delimiter=";"))
        header, last = rows[0], rows[-1]
        out = {}
        for key in ("SuccessfulCall(C)", "FailedCall(C)", "TotalCallCreated", "IncomingCall(C)"):
            if key in header and len(last) > header.index(key):
                with contextlib.suppress(ValueError):
                    out[key.split("(")[0]] = int(last[header.index(key)])
        return out

    def messages(self) -> str:
        path = self.workdir / "messages.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def errors(self) -> str:
        path = self.workdir / "errors.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


async def start_sipp(
    name: str,
    scenario: str,
    workdir: Path,
    *,
    ip: str,
    remote: str | None = None,
    service: str | None = None,
    calls: int = 1,
    rate: float = 10,
    limit: int | None = None,
    pause_ms: int | None = None,
    rows: list[list[str]] | None = None,
    auth: tuple[str, str] | None = None,
    auth_uri: str | None = None,
    trace_messages: bool = False,
    port: int | None = None,
    rtt: bool = False,
    timeout_s: int = 60,
    lost: int = 0,
    transport: str = "u1",
) -> Sipp:
    """Start SIPp with ``scenario`` from tests/sipp; a UAS when ``remote`` is None."""
    work = workdir / name
    work.mkdir(parents=True, exist_ok=True)
    port = port or free_port(ip)
    args = [sipp_binary()]
    if remote:
        args.append(remote)
    args += ["-sf", str(SCENARIOS / scenario), "-i", ip, "-p", str(port), "-m", str(calls), "-nostdin"]
    args += ["-r", str(rate), "-timeout", f"{timeout_s}s", "-max_retrans", "5"]
    args += ["-trace_stat", "-stf", str(work / "stat.csv"), "-fd", "1"]
    args += ["-trace_err", "-error_file", str(work / "errors.log")]
    if limit is not None:
        args += ["-l", str(limit)]
    if service:
        args += ["-s", service]
    if pause_ms is not None:
        args += ["-d", str(pause_ms)]
    if rows is not None:
        inf = work / "fields.csv"
        inf.write_text("SEQUENTIAL\n" + "".join(";".join(row) + ";\n" for row in rows))
        args += ["-inf", str(inf)]
    if auth is not None:
        args += ["-au", auth[0], "-ap", auth[1]]
    if auth_uri is not None:  # SIPp signs sip:<remote> unless given the Request-URI (less sip:)
        args += ["-auth_uri", auth_uri]
    if lost:  # SIPp drops this percentage of the messages it sends and receives
        args += ["-lost", str(lost)]
    if transport != "u1":
        args += ["-t", transport]
    if rtt:
        args += ["-trace_rtt", "-rtt_freq", "1"]
    if trace_messages:
        args += ["-trace_msg", "-message_file", str(work / "messages.log")]
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=work,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return Sipp(name, process, work, port)


async def udp_exchange(
    data: bytes, target: tuple[str, int], *, source_ip: str = CARRIER_IP, wait_s: float = 1.0, expect: int = 1
) -> list[bytes]:
    """Send one datagram from ``source_ip`` and collect up to ``expect`` replies."""
    transport, replies = await udp_endpoint(source_ip)
    try:
        transport.sendto(data, target)
        got: list[bytes] = []
        with contextlib.suppress(TimeoutError):
            while len(got) < expect:
                got.append(await asyncio.wait_for(replies.get(), wait_s))
        return got
    finally:
        transport.close()


async def udp_endpoint(ip: str, port: int = 0) -> tuple[asyncio.DatagramTransport, asyncio.Queue[bytes]]:
    """A raw UDP peer on ``ip`` (a carrier or phone written by hand): its
    transport and the queue of datagrams it receives. Close the transport."""
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Collect(asyncio.DatagramProtocol):
        def datagram_received(self, payload: bytes, addr: object) -> None:
            replies.put_nowait(payload)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Collect, local_addr=(ip, port))
    return transport, replies
