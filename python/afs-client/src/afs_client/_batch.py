"""`BatchLogger`: logging off the request path, through a bounded queue that a background
thread sends to the server in batches."""

from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Union

from . import _wire
from ._client import AfsClient
from ._errors import AfsError

if TYPE_CHECKING:
    from typing_extensions import Unpack

_log = logging.getLogger("afs_client")

_RECORD_AT = re.compile(r"^records\[(\d+)\]")


def _after_fork(ref: "weakref.ReferenceType[BatchLogger]") -> None:
    logger = ref()
    if logger is not None:
        logger._after_fork_in_child()


@dataclass(frozen=True)
class LoggerStats:
    """What a `BatchLogger` did with the records it was given.

    Every record given to ``log`` is either ``dropped`` (the queue was full, or the logger
    closed) or enqueued; an enqueued record is, in the end, ``sent`` (committed by the
    server), ``rejected`` (the server refused it: a bad value, a missing token), ``failed``
    (the server could not be reached or failed, ``max_retries`` times), or still ``queued``.
    """

    enqueued: int
    queued: int
    sent: int
    dropped: int
    rejected: int
    failed: int


class BatchLogger:
    """Logs calls in the background: `log` only encodes the record and puts it on a bounded
    queue, never waiting for the network; a thread sends what is queued as batches
    (``POST /v1/usage`` with up to ``batch_size`` records) at least every
    ``flush_interval`` seconds, and at once when a batch is full.

    **A full queue.** When ``max_queue`` records wait (the server is slow or down), `log`
    waits at most ``enqueue_timeout`` seconds (default 0: not at all) for room, then drops
    the record, returns ``False`` and counts it in ``stats().dropped``; the first drop, and
    every 1000th after it, is logged as a warning on the ``afs_client`` logger. It never
    blocks longer, so a server that is down never stalls the model server.

    **Failures.** A batch the server cannot take now (no connection, a timeout, a 5xx) is
    sent again after ``retry_backoff`` seconds, doubling, up to ``max_retries`` times, then
    counted as ``failed``. A batch is all or nothing on the server, so when it refuses one
    record (400 naming ``records[i]``), that record is counted as ``rejected`` and the rest
    is sent again; a batch too large for the server (413) is split in halves.

    **Exit.** `close` (also at the end of a ``with`` block) sends what is queued and stops
    the thread, waiting at most its ``timeout``. It is registered with `atexit`, so a
    process that exits normally (the end of the program, ``sys.exit``, an uncaught
    exception, a server's graceful shutdown) flushes the queue, waiting at most
    ``exit_timeout`` seconds. A process killed by a signal it does not handle (SIGKILL, or
    SIGTERM without a handler) loses what is queued. After a ``fork`` the child starts
    with an empty queue and a thread of its own on its first `log`.
    """

    def __init__(
        self,
        client: Union[AfsClient, str] = "http://127.0.0.1:8080",
        *,
        token: Optional[str] = None,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        enqueue_timeout: float = 0.0,
        max_retries: int = 3,
        retry_backoff: float = 0.5,
        exit_timeout: float = 5.0,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")
        self._client = client if isinstance(client, AfsClient) else AfsClient(client, token=token)
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._enqueue_timeout = enqueue_timeout
        self._max_retries = max_retries
        self._retry_backoff = retry_backoff
        self._exit_timeout = exit_timeout
        self._start_lock = threading.Lock()
        self._closed = False
        self._pid = -1
        self._thread: Optional[threading.Thread] = None
        self._reset()
        atexit.register(self._at_exit)
        if hasattr(os, "register_at_fork"):
            me = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _after_fork(me))

    def _reset(self) -> None:
        """A new queue, counters and wake-up events (at start, and in a forked child)."""
        self._queue: "queue.Queue[bytes]" = queue.Queue(self._max_queue)
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._enqueued = 0
        self._sent = 0
        self._dropped = 0
        self._rejected = 0
        self._failed = 0

    def _after_fork_in_child(self) -> None:
        """In a forked child: the parent's thread does not exist here, its locks may have
        been held at the fork, and what it queued is the parent's to send. The child starts
        afresh on its first `log`."""
        self._start_lock = threading.Lock()
        self._reset()
        self._thread = None
        self._client._forget_connections()

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._thread = threading.Thread(target=self._run, name="afs-batch-logger", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def log(
        self,
        query: Optional[str],
        response: Optional[str],
        model: str,
        **fields: Unpack[_wire.LogFields],
    ) -> bool:
        """Queues one call for logging; returns ``True`` when queued, ``False`` when dropped
        (the queue is full or the logger is closed). The record is encoded here, so a value
        JSON cannot carry raises `AfsError` (kind ``invalid_input``) at once."""
        return self.log_record(
            _wire.record(query, response, model, **fields)
        )

    def log_record(self, record: Mapping[str, Any]) -> bool:
        """`log` with a record dict (the keys of ``POST /v1/usage``)."""
        data = _wire.encode(dict(record))
        self._ensure_thread()
        with self._cond:
            if self._closed:
                self._dropped += 1
                return False
            self._enqueued += 1
        try:
            if self._enqueue_timeout > 0:
                self._queue.put(data, timeout=self._enqueue_timeout)
            else:
                self._queue.put_nowait(data)
        except queue.Full:
            with self._cond:
                self._enqueued -= 1
                self._dropped += 1
                dropped = self._dropped
            if dropped % 1000 == 1:
                _log.warning(
                    "afs logging queue full (%d records): %d records dropped so far",
                    self._max_queue, dropped,
                )
            return False
        if self._queue.qsize() >= self._batch_size:
            self._wake.set()
        return True

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Sends what is queued now and waits until it is handled (sent, rejected or failed),
        at most ``timeout`` seconds; returns whether it was."""
        with self._cond:
            target = self._enqueued
        if self._thread is None or self._pid != os.getpid():
            return target == 0
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._sent + self._rejected + self._failed < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: Optional[float] = None) -> bool:
        """Sends what is queued and stops the thread, waiting at most ``timeout`` seconds;
        returns whether everything queued was handled. Later `log` calls drop their record.
        Records still queued when the time is up are lost (``stats().queued``)."""
        with self._cond:
            self._closed = True
        atexit.unregister(self._at_exit)
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return True
        self._stopping.set()
        self._wake.set()
        thread.join(timeout)
        done = not thread.is_alive()
        if not done:
            _log.warning(
                "afs logging stopped after %s s with %d records not sent", timeout, self._queue.qsize()
            )
        else:
            self._client.close()
        return done

    def _at_exit(self) -> None:
        self.close(self._exit_timeout)

    def __enter__(self) -> "BatchLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> LoggerStats:
        """What happened to the records given so far."""
        with self._cond:
            return LoggerStats(
                enqueued=self._enqueued,
                queued=self._queue.qsize(),
                sent=self._sent,
                dropped=self._dropped,
                rejected=self._rejected,
                failed=self._failed,
            )

    def _count(self, sent: int = 0, rejected: int = 0, failed: int = 0) -> None:
        with self._cond:
            self._sent += sent
            self._rejected += rejected
            self._failed += failed
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            while True:
                batch: List[bytes] = []
                while len(batch) < self._batch_size:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if not batch:
                    break
                self._send(batch)
            if self._stopping.is_set() and self._queue.empty():
                return

    def _send(self, batch: List[bytes]) -> None:
        attempt = 0
        while batch:
            try:
                self._client.log_batch_json(b"[" + b",".join(batch) + b"]")
                self._count(sent=len(batch))
                return
            except AfsError as err:
                at = _RECORD_AT.match(err.field or "") if err.status == 400 else None
                if at is not None and int(at.group(1)) < len(batch):
                    index = int(at.group(1))
                    _log.warning("afs refused a logged record: %s", err)
                    self._count(rejected=1)
                    batch = batch[:index] + batch[index + 1:]
                    continue
                too_large = err.status == 413 or (err.status == 400 and err.field == "records")
                if too_large and len(batch) > 1:
                    half = len(batch) // 2
                    self._send(batch[:half])
                    self._send(batch[half:])
                    return
                if err.status is not None and 400 <= err.status < 500 and err.status not in (408, 429):
                    _log.warning("afs refused a batch of %d records: %s", len(batch), err)
                    self._count(rejected=len(batch))
                    return
                attempt += 1
                if attempt > self._max_retries:
                    _log.warning("afs logging gave up on %d records: %s", len(batch), err)
                    self._count(failed=len(batch))
                    return
                # Waits less when stopping, so that close() is not held up by a server
                # that is down for longer than it allows.
                delay = self._retry_backoff * 2 ** (attempt - 1)
                if self._stopping.is_set():
                    delay = min(delay, 0.1)
                time.sleep(delay)
