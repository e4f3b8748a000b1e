"""The durable outbox (issue 7): writes that must not be lost when Postgres is
away or the process dies.

Every finished call's record, and every inbound text the database could not
take at once, is appended to ``outbox.jsonl`` and fsynced (one fsync per
batch: group commit) before anything depends on it: a text is acknowledged,
and the 200 to the BYE that ended a call is sent, only once its entry is on
disk. A single writer then applies entries to Postgres in file order, in
batches of one transaction (a batch's calls in one statement, so the writer
keeps up by growing its batches, not its round trips), and records how far it
got in ``outbox.offset``.
After a crash or an outage the rest is replayed from that offset; every write
is idempotent (the call record's ``UNIQUE (sip_call_id, direction)``, the
text's dedupe claim, idempotency keys on timeline and usage rows), so a
replayed entry that had in fact been committed changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from gateway.domain.index import Index
from gateway.store import texts
from gateway.store.calls import CallRecord, call_from_json, call_to_json, write_calls

log = logging.getLogger(__name__)
BATCH = 100
COMPACT_BYTES = 8 * 1024 * 1024  # rewrite the file once this much of it is applied
DB_DOWN = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
           asyncpg.CannotConnectNowError, asyncpg.InternalClientError)  # fmt: skip


@dataclass(slots=True)
class _Entry:
    kind: str  # "call" | "text"
    payload: dict[str, Any]
    on_durable: Callable[[], None] | None = None
    durable: asyncio.Future[None] | None = None
    end: int = -1  # file offset after this entry, once written
    tries: int = field(default=0)


class Outbox:
    """Write-behind for call records, and the outage path for texts.
    :meth:`add_call` never blocks; :meth:`add_text` waits for one fsync."""

    def __init__(self, pool: asyncpg.Pool, directory: Path, index: Callable[[], Index]) -> None:
        self._pool = pool
        self._dir = directory
        self._index = index
        self._file = directory / "outbox.jsonl"
        self._offset_file = directory / "outbox.offset"
        self._queue: deque[_Entry] = deque()
        self._unwritten: list[_Entry] = []
        self._wake = asyncio.Event()  # new entries to make durable
        self._durable = asyncio.Event()  # new durable entries to apply
        self._flushed = asyncio.Event()  # every entry so far is on disk
        self._flushed.set()
        self._file_lock = asyncio.Lock()  # appends and the compaction never overlap
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._size = 0
        self.database_ok = True
        self.last_error = ""
        self.applied = 0
        self.refused = 0

    async def start(self) -> int:
        """Open the outbox and queue what a previous run left unapplied.
        Returns how many entries will be replayed."""
        await asyncio.to_thread(self._private)
        replay = await asyncio.to_thread(self._read_pending)
        for entry in replay:
            self._queue.append(entry)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox")
        if replay:
            log.warning("outbox: replaying %d entries left by the previous run", len(replay))
            self._durable.set()
        else:
            self._idle.set()
        return len(replay)

    def add_call(self, rec: CallRecord, on_durable: Callable[[], None] | None = None) -> None:
        """Queue a finished call; ``on_durable`` runs once it is on disk."""
        self._push(_Entry("call", call_to_json(rec), on_durable=on_durable))

    async def add_text(self, text: texts.InboundText) -> None:
        """Make ``text`` durable for later storage; returns once it is on disk.
        Raises OSError when the outbox itself cannot be written."""
        entry = _Entry("text", texts.text_to_json(text), durable=asyncio.get_running_loop().create_future())
        self._push(entry)
        assert entry.durable is not None
        await entry.durable

    def backlog(self) -> int:
        return len(self._queue)

    async def drain(self, limit_s: float) -> bool:
        """Wait until every entry so far is applied to Postgres (or ``limit_s``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), limit_s)
        return not self._queue

    async def stop(self, grace_s: float) -> None:
        await self.drain(grace_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._unwritten:  # last chance to make them durable
            await self._append_on_disk(self._unwritten)
        if self._queue:
            log.warning("outbox: %d entries left for the next start to replay", len(self._queue))

    # -- the single writer --------------------------------------------------------

    async def wait_durable(self, limit_s: float) -> bool:
        """Wait until every entry so far is on disk and its callbacks have run
        (a held-back BYE answer has been sent), or ``limit_s`` passes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flushed.wait(), limit_s)
        return self._flushed.is_set()

    def _push(self, entry: _Entry) -> None:
        self._flushed.clear()
        self._queue.append(entry)
        self._unwritten.append(entry)
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        """Two loops: the fsync group commit never waits for Postgres, so a held
        BYE answer or a text acknowledgement is as quick as the disk."""
        await asyncio.gather(self._persist_loop(), self._apply_loop())

    async def _persist_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._unwritten:
                await self._persist()
            self._durable.set()
            self._flushed.set()

    async def _apply_loop(self) -> None:
        backoff = 0.1
        while True:
            if not self._queue:
                self._idle.set()
                await self._compact()
            if not self._head_durable() or not self.database_ok:
                self._durable.clear()  # then look again, so a wake-up between is not lost
                if not self._head_durable():
                    await self._durable.wait()
                    continue
                if not self.database_ok:
                    await asyncio.sleep(backoff)
            batch: list[_Entry] = []
            for entry in self._queue:
                if entry.end < 0 or len(batch) == BATCH:
                    break
                batch.append(entry)
            try:
                await self._apply(batch)
            except DB_DOWN as exc:
                if self.database_ok:
                    log.warning("outbox: database unavailable (%s); holding %d", exc, len(self._queue))
                self.database_ok, self.last_error = False, f"{type(exc).__name__}: {exc}"
                backoff = min(backoff * 2, 2.0)
                continue
            if not self.database_ok:
                log.warning("outbox: database back; replaying")
            self.database_ok, backoff = True, 0.1
            for _ in batch:
                self._queue.popleft()
            self.applied += len(batch)
            await asyncio.to_thread(self._write_offset, batch[-1].end)

    def _head_durable(self) -> bool:
        return bool(self._queue) and self._queue[0].end >= 0

    async def _persist(self) -> None:
        if not self._unwritten:
            return
        entries, self._unwritten = self._unwritten, []
        try:
            async with self._file_lock:
                await self._append_on_disk(entries)
        except OSError as exc:
            log.error("outbox: cannot write %s: %s", self._file, exc)
            for entry in entries:
                if entry.durable is not None and not entry.durable.done():
                    entry.durable.set_exception(exc)
            for entry in entries:
                if entry.kind == "call":
                    entry.end = self._size  # still goes to the database, just not durably
                else:
                    self._queue.remove(entry)  # never in a batch: it was not durable
            return
        for entry in entries:
            if entry.on_durable is not None:
                # Dropped once run: it holds the finished call, which need not
                # wait for Postgres in a backlog.
                callback, entry.on_durable = entry.on_durable, None
                callback()
            if entry.durable is not None and not entry.durable.done():
                entry.durable.set_result(None)

    async def _apply(self, batch: list[_Entry]) -> None:
        """One transaction for the batch: its calls in one statement, its texts
        (the outage path, rare) one by one. A value Postgres refuses fails the
        batch, which is then applied entry by entry so only that entry is lost."""
        records = [(entry, self._read(entry)) for entry in batch]
        async with self._pool.acquire(timeout=2.0) as conn:
            try:
                async with conn.transaction():  # one commit for the batch
                    await self._store(conn, [record for _, record in records])
                return
            except asyncpg.PostgresError as exc:
                if isinstance(exc, DB_DOWN):
                    raise
            for entry, record in records:  # one bad entry must not hold up the others
                try:
                    async with conn.transaction():
                        await self._store(conn, [record])
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, DB_DOWN):
                        raise
                    self.refused += 1
                    log.error("outbox: %s entry refused by the database, skipped: %s", entry.kind, exc)

    def _read(self, entry: _Entry) -> CallRecord | texts.InboundText | None:
        try:
            if entry.kind == "call":
                return call_from_json(entry.payload)
            return texts.text_from_json(entry.payload)
        except ValueError as exc:  # pydantic's ValidationError: not an entry this gateway can read
            self.refused += 1
            log.error("outbox: %s entry unreadable, skipped: %s", entry.kind, exc)
            return None

    async def _store(self, conn: Any, records: list[CallRecord | texts.InboundText | None]) -> None:
        await write_calls(conn, [record for record in records if isinstance(record, CallRecord)])
        for record in records:
            if not isinstance(record, texts.InboundText):
                continue
            try:
                await texts.accept(conn, self._index(), record)
            except texts.UnknownNumber:
                self.refused += 1  # the number was released meanwhile; nothing to route it to
                log.error("outbox: text to %s, a number no longer ours, dropped", record.to_e164)

    # -- the file ------------------------------------------------------------------------

    async def _append_on_disk(self, entries: list[_Entry]) -> None:
        """Append and fsync in a worker thread; the entries' offsets and the
        file size are set back here, on the loop's thread, which reads them."""
        ends = await asyncio.to_thread(self._append, [(e.kind, e.payload) for e in entries])
        for entry, end in zip(entries, ends, strict=True):
            entry.end = end
        self._size = ends[-1]

    def _append(self, rows: list[tuple[str, dict[str, Any]]]) -> list[int]:
        ends = []
        with self._file.open("ab") as f:
            for kind, payload in rows:
                f.write(json.dumps({"kind": kind, "payload": payload}).encode() + b"\n")
                ends.append(f.tell())
            f.flush()
            os.fsync(f.fileno())
        return ends

    def _write_offset(self, offset: int) -> None:
        """Replace ``outbox.offset`` atomically (temp file, fsync, rename, fsync
        the directory): a crash leaves the old offset or the new, never a
        truncated number that would start the replay mid-line."""
        temporary = self._offset_file.with_suffix(".offset.tmp")
        fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(offset).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self._offset_file)
        directory = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _read_pending(self) -> list[_Entry]:
        if not self._file.exists():
            return []
        try:
            start = int(self._offset_file.read_text().strip() or 0)
        except (OSError, ValueError):
            start = 0
        entries = []
        with self._file.open("rb") as f:
            f.seek(start)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn by a crash mid-append: never acknowledged
                try:
                    row = json.loads(line)
                    entry = _Entry(row["kind"], row["payload"], end=f.tell())
                except (ValueError, KeyError, TypeError) as exc:  # damaged on disk: skip it, start anyway
                    self.refused += 1
                    log.error("outbox: unreadable entry at byte %d skipped: %s", f.tell() - len(line), exc)
                    continue
                entries.append(entry)
        self._size = self._file.stat().st_size
        return entries

    async def _compact(self) -> None:
        """Everything is applied: start the file afresh once it has grown."""
        async with self._file_lock:
            if self._size >= COMPACT_BYTES and not self._queue:
                await asyncio.to_thread(self._reset)
                self._size = 0  # on the loop's thread, which reads it

    def _private(self) -> None:
        """The outbox holds callers' numbers and text bodies: the directory is
        0700 and its files 0600 (created so, and tightened if an older run
        left them wider). Later writes reuse these files, keeping the modes."""
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir.chmod(0o700)
        for path in (self._file, self._offset_file):
            os.close(os.open(path, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600))
            path.chmod(0o600)

    def _reset(self) -> None:
        with self._file.open("wb") as f:
            os.fsync(f.fileno())
        self._write_offset(0)
