"""The package against a live ``afs serve``: the Rust test
``crates/afs-cli/tests/serve_python.rs`` starts the server (with ``--header-timeout 1``) and
runs this suite with ``AFS_URL`` and ``AFS_TOKEN`` set, the package installed by pip."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import unittest
import urllib.error
from urllib.parse import urlsplit

from afs_client import AfsClient, AfsError, AsyncAfsClient, BatchLogger

URL = os.environ["AFS_URL"]
TOKEN = os.environ["AFS_TOKEN"]
PORT = urlsplit(URL).port


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_connections() -> int:
    """Established TCP connections whose local port is the server's: the server's side of
    each open client connection, as the kernel sees them."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == PORT and state == "01":
                count += 1
    return count


class BlackHole:
    """A listening socket that never accepts: connections open, answers never come."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


class Errors(unittest.TestCase):
    def test_a_server_that_is_down_raises_afs_error(self) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        with self.assertRaises(AfsError) as caught:
            AfsClient(url).route()
        self.assertEqual((caught.exception.status, caught.exception.kind), (None, "connection"))
        self.assertNotIsInstance(caught.exception, urllib.error.URLError)

        async def route() -> None:
            await AsyncAfsClient(url).route()

        with self.assertRaises(AfsError) as caught:
            asyncio.run(route())
        self.assertEqual(caught.exception.kind, "connection")

    def test_a_server_that_does_not_answer_raises_a_timeout(self) -> None:
        with BlackHole() as url:
            with self.assertRaises(AfsError) as caught:
                AfsClient(url, timeout=0.3).status()
            self.assertEqual(caught.exception.kind, "timeout")

    def test_error_answers_carry_status_kind_and_field(self) -> None:
        with AfsClient(URL, token=TOKEN) as afs:
            with self.assertRaises(AfsError) as caught:
                afs.log("q", "r", "py-errors", quality_score=1.5)
            err = caught.exception
            self.assertEqual((err.status, err.kind, err.field), (400, "invalid_input", "quality_score"))
            with self.assertRaises(AfsError) as caught:
                afs.feedback("01NOSUCHRECORD0000000000000", 1)
            self.assertEqual(caught.exception.status, 404)
            with self.assertRaises(AfsError) as caught:
                afs.log("q", "r", "m", latency_ms=float("nan"))
            self.assertEqual((caught.exception.status, caught.exception.kind), (None, "invalid_input"))
        with self.assertRaises(AfsError) as caught:
            AfsClient(URL).log("q", "r", "py-errors")
        self.assertEqual((caught.exception.status, caught.exception.kind), (401, "unauthorized"))


class Conversations(unittest.TestCase):
    def test_a_conversation_is_logged_whole_and_a_bad_turn_is_named(self) -> None:
        chat = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
        with AfsClient(URL, token=TOKEN) as afs:
            afs.log(None, None, "py-conv", messages=chat)
            afs.log("2+2?", "4", "py-conv", messages=chat, quality_score=0.9)
            afs.log_batch([{"model": "py-conv", "messages": chat}])
            with self.assertRaises(AfsError) as caught:
                afs.log(None, None, "py-conv", messages=[{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}])
            self.assertEqual((caught.exception.status, caught.exception.field), (400, "messages[1].role"))
            with self.assertRaises(AfsError) as caught:
                afs.log("Hi", None, "py-conv", messages=chat)
            self.assertEqual((caught.exception.status, caught.exception.field), (400, "query"))
        with BatchLogger(URL, token=TOKEN) as logger:
            self.assertTrue(logger.log(None, None, "py-conv", messages=chat))


class KeepAlive(unittest.TestCase):
    def test_calls_reuse_one_connection(self) -> None:
        before = server_connections()
        with AfsClient(URL, token=TOKEN) as afs:
            for i in range(10):
                afs.route(unit=f"user-{i}")
                afs.log(f"q{i}", "r", "py-keepalive", unit=f"user-{i}")
            self.assertEqual(afs.stats(model="py-keepalive")["total"], 10)
            self.assertEqual(afs.connections_opened, 1)
            # The server sees one more connection than before, not 21.
            self.assertEqual(server_connections() - before, 1)

    def test_a_connection_the_server_closed_is_replaced(self) -> None:
        before = server_connections()
        with AfsClient(URL, token=TOKEN) as afs:
            afs.health()
            self.assertEqual(server_connections() - before, 1)
            # The server closes a connection idle for its keep-alive time (1 s here); wait
            # until the kernel no longer counts it as established.
            deadline = time.monotonic() + 20
            while server_connections() > before and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(server_connections(), before)
            afs.log("q", "r", "py-stale")
            self.assertEqual(afs.connections_opened, 2)
        with AfsClient(URL, token=TOKEN) as afs:
            self.assertEqual(afs.stats(model="py-stale")["total"], 1)

    def test_threads_share_a_client(self) -> None:
        with AfsClient(URL, token=TOKEN) as afs:
            errors = []

            def work(n: int) -> None:
                try:
                    for i in range(20):
                        afs.log(f"q{n}-{i}", "r", "py-threads")
                except AfsError as err:
                    errors.append(err)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(errors, [])
            self.assertEqual(afs.stats(model="py-threads")["total"], 80)
            self.assertLessEqual(afs.connections_opened, 4)


class Async(unittest.TestCase):
    def test_the_async_client_logs_routes_and_reads(self) -> None:
        async def main() -> None:
            async with AsyncAfsClient(URL, token=TOKEN) as afs:
                route = await afs.route(unit="user-a")
                self.assertEqual(route["arm"], "champion")
                record_id = await afs.log("q", "r", "py-async", quality_score=0.5, unit="user-a")
                done = await afs.feedback(record_id, -1, text="wrong")
                self.assertEqual(done["value"], -1)
                ids = await asyncio.gather(*(afs.log(f"q{i}", "r", "py-async") for i in range(10)))
                self.assertEqual(len(set(ids)), 10)
                opened = afs.connections_opened
                for i in range(10):
                    await afs.log(f"s{i}", "r", "py-async")
                # Sequential calls reuse the kept-alive connections of the concurrent ones.
                self.assertEqual(afs.connections_opened, opened)
                batch = await afs.log_batch([{"query": "b", "response": "r", "model": "py-async"}] * 3)
                self.assertEqual(len(batch), 3)
                stats = await afs.stats(model="py-async")
                self.assertEqual((stats["total"], stats["negative_feedback"]), (24, 1))
                with self.assertRaises(AfsError) as caught:
                    await afs.log_batch([{"query": "b", "response": "r", "model": "m", "feedback": 2}])
                self.assertEqual(caught.exception.field, "records[0].feedback")

        asyncio.run(main())


class Batches(unittest.TestCase):
    def test_every_record_is_delivered_and_a_bad_one_is_rejected_alone(self) -> None:
        with BatchLogger(URL, token=TOKEN, batch_size=64, flush_interval=0.05) as logger:
            for i in range(1000):
                quality = 1.5 if i == 500 else 0.5
                self.assertTrue(logger.log(f"q{i}", "r", "py-batch", quality_score=quality))
            self.assertTrue(logger.flush(timeout=30))
            stats = logger.stats()
        self.assertEqual((stats.sent, stats.rejected, stats.dropped, stats.queued), (999, 1, 0, 0))
        with AfsClient(URL, token=TOKEN) as afs:
            self.assertEqual(afs.stats(model="py-batch")["total"], 999)

    def test_log_never_waits_for_the_network(self) -> None:
        with BlackHole() as url:
            logger = BatchLogger(url, max_queue=10_000, batch_size=100)
            start = time.monotonic()
            for i in range(2000):
                logger.log(f"q{i}", "r", "py-fast")
            self.assertLess(time.monotonic() - start, 2.0)
            logger.close(timeout=0.1)

    def test_a_full_queue_drops_and_counts_without_blocking(self) -> None:
        with BlackHole() as url:
            # One record at a time, and the server never answers: the thread holds the
            # first record, the queue holds the next ten, the rest is dropped.
            client = AfsClient(url, timeout=30)
            logger = BatchLogger(client, max_queue=10, batch_size=1, max_retries=0)
            self.assertTrue(logger.log("first", "r", "py-full"))
            deadline = time.monotonic() + 10
            while logger.stats().queued and time.monotonic() < deadline:
                time.sleep(0.01)
            for i in range(10):
                self.assertTrue(logger.log(f"q{i}", "r", "py-full"))
            start = time.monotonic()
            self.assertEqual([logger.log(f"x{i}", "r", "py-full") for i in range(5)], [False] * 5)
            self.assertLess(time.monotonic() - start, 0.5)
            stats = logger.stats()
            self.assertEqual((stats.enqueued, stats.queued, stats.dropped, stats.sent), (11, 10, 5, 0))
            # With enqueue_timeout the caller waits that long for room, no longer.
            logger._enqueue_timeout = 0.2
            start = time.monotonic()
            self.assertFalse(logger.log("y", "r", "py-full"))
            self.assertGreaterEqual(time.monotonic() - start, 0.2)
            self.assertLess(time.monotonic() - start, 1.0)
            # Closing waits at most its timeout and says that records were left.
            start = time.monotonic()
            self.assertFalse(logger.close(timeout=0.3))
            self.assertLess(time.monotonic() - start, 1.0)
            self.assertFalse(logger.log("after", "r", "py-full"))
            self.assertEqual(logger.stats().dropped, 7)

    @unittest.skipUnless(hasattr(os, "fork"), "needs fork")
    def test_a_forked_child_logs_through_a_thread_of_its_own(self) -> None:
        # As under gunicorn --preload: the logger is made, and used, before the fork.
        with BatchLogger(URL, token=TOKEN, flush_interval=0.05) as logger:
            logger.log("parent", "r", "py-fork")
            self.assertTrue(logger.flush(timeout=10))
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for i in range(5):
                        logger.log(f"child{i}", "r", "py-fork")
                    code = 0 if logger.close(timeout=10) and logger.stats().sent == 5 else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            self.assertEqual(os.waitstatus_to_exitcode(status), 0)
            logger.log("parent-again", "r", "py-fork")
            self.assertTrue(logger.flush(timeout=10))
            self.assertEqual(logger.stats().sent, 2)
        with AfsClient(URL, token=TOKEN) as afs:
            self.assertEqual(afs.stats(model="py-fork")["total"], 7)

    def test_a_process_that_exits_flushes_its_queue(self) -> None:
        # Batches are sent only at exit: the interval is longer than the child lives.
        program = textwrap.dedent(
            f"""
            from afs_client import BatchLogger
            logger = BatchLogger({URL!r}, token={TOKEN!r}, flush_interval=600, batch_size=1000)
            for i in range(300):
                logger.log(f"q{{i}}", "r", "py-exit-flush", unit=f"u{{i % 7}}")
            print(logger.stats().sent)
            """
        )
        child = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
        self.assertEqual(child.returncode, 0, child.stderr)
        self.assertEqual(child.stdout.strip(), "0")
        with AfsClient(URL, token=TOKEN) as afs:
            self.assertEqual(afs.stats(model="py-exit-flush")["total"], 300)


if __name__ == "__main__":
    unittest.main()
