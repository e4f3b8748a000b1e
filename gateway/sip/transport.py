"""UDP and TCP listeners for SIP on the running loop (uvloop in production).

aiosipua parses and serialises; the sockets are ours. aiosipua's own UDP
protocol asserts ``isinstance(transport, asyncio.DatagramTransport)``, which
uvloop's UDP transport is not (it only quacks like one), so it cannot run on
uvloop; this module's :class:`_Datagrams` accepts any transport with
``sendto``. The upstream fix is to drop the assertion for a ``cast`` (or check
for ``sendto``); see the note in README.

Every byte that arrives goes through :meth:`SipTransports._deliver`, which
never raises: unparseable input is counted and dropped, and a handler's
exception is counted and logged instead of reaching the loop. CRLFs before a
start line are skipped (RFC 3261 §7.5); a CRLFCRLF keep-alive on TCP is
answered with a CRLF pong (RFC 5626 §3.5.1).

Destinations given as host names are resolved (A/AAAA through the loop's
resolver) and cached for ``NAME_TTL_S``; datagrams for a name being resolved
wait for the answer, and an unresolvable name drops them (the transaction's
timer then fails the request). SRV/NAPTR (RFC 3263) are not looked up: a
name is used with the port its URI gives, or 5060.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from aiosipua import SipRequest, SipResponse

from gateway.sip.codec import parse

log = logging.getLogger(__name__)
# aiosipua logs every mis-sized body at WARNING; hostile peers would flood the log.
logging.getLogger("aiosipua").setLevel(logging.ERROR)

MAX_HEADER_BYTES = 16 * 1024
READ_IDLE_S = 300.0  # a TCP peer silent this long is closed
NAME_TTL_S = 60.0
MAX_WAITING_PER_NAME = 256


class Peer(NamedTuple):
    transport: str  # "udp" | "tcp"
    host: str
    port: int


Handler = Callable[[SipRequest | SipResponse, Peer], None]
Rejecter = Callable[[Peer], None]


@functools.lru_cache(maxsize=65536)
def is_address(host: str) -> bool:
    """Cached: asked for every datagram sent, and peers repeat."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class SipTransports:
    """One UDP socket and one TCP listener on ``host:port``; replies go out the
    way the request came in (TCP on its connection, UDP from our socket)."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        on_malformed: Rejecter,
        max_bytes: int,
        on_bad_version: Handler | None = None,
        receive_buffer: int = 0,
    ) -> None:
        self._host = host
        self._port = port
        self._handler = handler
        self._on_malformed = on_malformed
        self._on_bad_version = on_bad_version
        self._receive_buffer = receive_buffer
        self._names: dict[str, tuple[float, str | None]] = {}  # name -> (expires, address)
        self._resolving: dict[str, list[tuple[bytes, int]]] = {}
        self._max_bytes = max_bytes
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._streams: dict[tuple[str, int], asyncio.StreamWriter] = {}
        self._readers: set[asyncio.Task[None]] = set()
        self.port = port

    async def start(self) -> None:
        """Bind UDP, then TCP on the same port (the UDP one when port 0 was asked)."""
        loop = asyncio.get_running_loop()
        for attempt in range(20):  # port 0: the UDP port picked may be taken for TCP; pick again
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), sock=self._udp_socket()
            )
            self._udp = transport
            self.port = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_stream, self._host, self.port, limit=MAX_HEADER_BYTES
                )
                return
            except OSError:
                transport.close()
                if self._port != 0 or attempt == 19:
                    raise

    def _udp_socket(self) -> socket.socket:
        """The UDP socket, with a receive buffer large enough to ride out a
        short stall at hundreds of calls a second (the kernel's default, about
        200 KB, holds a few hundred datagrams; Linux caps the request at
        net.core.rmem_max)."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if self._receive_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    async def stop(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._streams.values()):
            writer.close()
        for task in list(self._readers):
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
        if self._udp is not None:
            self._udp.close()

    def send_bytes(self, data: bytes, peer: Peer) -> bool:
        """Queue ``data`` for ``peer``; False when it cannot be sent (no TCP
        connection to that peer any more, or the socket is closed). Never blocks."""
        if peer.transport == "tcp":
            writer = self._streams.get((peer.host, peer.port))
            if writer is None or writer.is_closing():
                return False
            writer.write(data)
            return True
        if self._udp is None or self._udp.is_closing():
            return False
        host = peer.host
        if not is_address(host):
            cached = self._names.get(host)
            if cached is None or cached[0] < time.monotonic():
                self._resolve_then_send(host, data, peer.port)
                return True
            if cached[1] is None:
                return False  # known not to resolve
            host = cached[1]
        try:
            self._udp.sendto(data, (host, peer.port))
        except (OSError, ValueError) as exc:  # unresolvable or unreachable target
            log.warning("SIP send to %s:%s failed: %s", peer.host, peer.port, exc)
            return False
        return True

    def _resolve_then_send(self, name: str, data: bytes, port: int) -> None:
        waiting = self._resolving.get(name)
        if waiting is not None:
            if len(waiting) < MAX_WAITING_PER_NAME:
                waiting.append((data, port))
            return
        self._resolving[name] = [(data, port)]
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _resolve(self, name: str) -> None:
        address: str | None = None
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_DGRAM), 5.0
            )
            for family, *_, sockaddr in infos:
                if family == socket.AF_INET:  # IPv4 first: our UDP socket is IPv4 unless bound to ::
                    address = str(sockaddr[0])
                    break
        except (OSError, TimeoutError, UnicodeError) as exc:
            log.warning("SIP destination %s does not resolve: %s", name, exc)
        self._names[name] = (time.monotonic() + NAME_TTL_S, address)
        if len(self._names) > 10_000:
            self._names.pop(next(iter(self._names)))
        waiting = self._resolving.pop(name, [])
        if address is None or self._udp is None or self._udp.is_closing():
            return
        for data, port in waiting:
            with contextlib.suppress(OSError, ValueError):
                self._udp.sendto(data, (address, port))

    def _deliver(self, data: bytes, peer: Peer) -> None:
        if len(data) > self._max_bytes:
            self._on_malformed(peer)
            return
        if data[:1] in (b"\r", b"\n"):
            data = data.lstrip(b"\r\n")  # CRLFs before the start line (RFC 3261 §7.5)
            if not data.strip():
                return  # a CRLF keep-alive (RFC 5626)
        try:
            message = parse(data)
        except Exception:
            self._on_malformed(peer)
            return
        if not _version_ok(data, message) and self._on_bad_version is not None:
            self._on_bad_version(message, peer)
            return
        self._handler(message, peer)

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = writer.get_extra_info("peername")
        peer = Peer("tcp", str(name[0]), int(name[1]))
        self._streams[(peer.host, peer.port)] = writer
        task = asyncio.current_task()
        if task is not None:
            self._readers.add(task)
        try:
            while True:
                data = await asyncio.wait_for(self._read_message(reader, writer), READ_IDLE_S)
                if data is None:
                    break
                self._deliver(data, peer)
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            self._on_malformed(peer)
        finally:
            self._streams.pop((peer.host, peer.port), None)
            if task is not None:
                self._readers.discard(task)
            writer.close()

    async def _read_message(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """One message framed by Content-Length (RFC 3261 §18.3); None at EOF.
        Raises ValueError for a frame we refuse (too big, bad length)."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    raise
                return None
            if head.strip():
                break
            if head.endswith(b"\r\n\r\n"):  # a CRLFCRLF ping: pong (RFC 5626 §3.5.1)
                writer.write(b"\r\n")
        head = head.lstrip(b"\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l"):
                length = int(value.strip())
                break
        if length < 0 or len(head) + length > self._max_bytes:
            raise ValueError("frame too big")
        body = await reader.readexactly(length) if length else b""
        return head + body


class _Datagrams(asyncio.DatagramProtocol):
    """Accepts uvloop's UDP transport as well as asyncio's (see module doc)."""

    def __init__(self, owner: SipTransports) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._owner._deliver(data, Peer("udp", str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a vanished phone: the transaction timers handle it.
        log.debug("SIP UDP error: %s", exc)


def _version_ok(data: bytes, message: SipRequest | SipResponse) -> bool:
    """Requests must say SIP/2.0 at the end of their start line (505 otherwise)."""
    if not isinstance(message, SipRequest):
        return True
    end = data.find(b"\n")
    line = data[:end] if end >= 0 else data
    return line.rstrip().upper().endswith(b" SIP/2.0")
