"""`AsyncAfsClient`: the asyncio client, HTTP/1.1 over kept-alive asyncio streams."""

from __future__ import annotations

import asyncio
import ssl
from types import TracebackType
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

from . import _wire
from ._errors import AfsError
from ._wire import Json, Param

if TYPE_CHECKING:
    from typing_extensions import Unpack

_Connection = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Stale(Exception):
    """A kept-alive connection was closed by the server before it answered."""


class AsyncAfsClient:
    """The asynchronous twin of `AfsClient`: the same methods, as coroutines. Use one client
    within one event loop; concurrent calls each take a connection of their own, and
    connections are kept alive and reused (at most ``max_idle_connections`` kept idle).
    Every failure raises `AfsError`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        token: Optional[str] = None,
        timeout: float = 10.0,
        max_idle_connections: int = 8,
    ) -> None:
        self._endpoint = _wire.parse_base_url(base_url)
        self._token = token
        self._timeout = timeout
        self._max_idle = max_idle_connections
        self._idle: List[_Connection] = []
        self._opened = 0
        self._closed = False

    @property
    def base_url(self) -> str:
        """The server's base URL."""
        return self._endpoint.url

    @property
    def connections_opened(self) -> int:
        """How many connections this client has opened so far (reuse keeps it low)."""
        return self._opened

    async def aclose(self) -> None:
        """Closes the idle connections; later calls raise `AfsError` (kind ``closed``)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def __aenter__(self) -> "AsyncAfsClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    async def _open(self) -> _Connection:
        self._opened += 1
        context = ssl.create_default_context() if self._endpoint.scheme == "https" else None
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(self._endpoint.host, self._endpoint.port, ssl=context),
                self._timeout,
            )
        except asyncio.TimeoutError:
            raise AfsError(None, f"cannot reach afs at {self.base_url}: timed out", "timeout") from None
        except OSError as err:
            raise AfsError(None, f"cannot reach afs at {self.base_url}: {err}", "connection") from None

    async def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        params: Optional[Mapping[str, Param]] = None,
    ) -> Json:
        """Sends one request (``body`` is JSON text) and returns the answer's JSON."""
        if self._closed:
            raise AfsError(None, "the client is closed", "closed")
        request_target = _wire.target(self._endpoint, path, params)
        head = f"{method} {request_target} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in _wire.headers(self._endpoint, self._token, body).items()
        )
        message = head.encode("latin-1") + b"\r\n" + (body or b"")
        for attempt in (0, 1):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._open()
            try:
                status, raw, keep = await asyncio.wait_for(self._exchange(conn, message), self._timeout)
            except _Stale as err:
                conn[1].close()
                if reused and attempt == 0:
                    continue
                raise AfsError(None, f"connection to {self.base_url} lost: {err}", "connection") from None
            except asyncio.TimeoutError:
                conn[1].close()
                raise AfsError(
                    None, f"no answer from {self.base_url} within {self._timeout} s", "timeout"
                ) from None
            except OSError as err:
                conn[1].close()
                raise AfsError(None, f"connection to {self.base_url} failed: {err}", "connection") from None
            except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
                conn[1].close()
                raise AfsError(None, f"not an HTTP answer: {err!r}", "invalid_response") from None
            except BaseException:
                # Cancelled half-way: the connection's state is unknown, so it is not reused.
                conn[1].close()
                raise
            if keep and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                conn[1].close()
            return _wire.answer(status, raw)
        raise AssertionError("unreachable")

    @staticmethod
    async def _exchange(conn: _Connection, message: bytes) -> Tuple[int, bytes, bool]:
        """Writes ``message`` and reads one answer: status, body, and whether the connection
        may be used again."""
        reader, writer = conn
        try:
            writer.write(message)
            await writer.drain()
            status_line = await reader.readline()
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as err:
            raise _Stale(repr(err)) from None
        if not status_line:
            raise _Stale("closed by the server")
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError(f"bad status line {status_line!r}")
        status = int(parts[1])
        fields: Dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        keep = parts[0] == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
        if fields.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            raw = b"".join(chunks)
        elif "content-length" in fields:
            raw = await reader.readexactly(int(fields["content-length"]))
        else:
            raw = await reader.read()
            keep = False
        return status, raw, keep

    async def log(
        self,
        query: Optional[str],
        response: Optional[str],
        model: str,
        **fields: Unpack[_wire.LogFields],
    ) -> str:
        """Logs one call and returns its id, once the server has committed it. To keep the
        network off a request path, use `BatchLogger` instead."""
        body = _wire.record(query, response, model, **fields)
        return str((await self.request("POST", "/v1/usage", _wire.encode(body)))["id"])

    async def log_batch(self, records: Iterable[Mapping[str, Any]]) -> List[str]:
        """Logs many calls in one transaction and returns their ids in order."""
        answer = await self.request("POST", "/v1/usage", _wire.encode(list(records)))
        return [str(i) for i in answer["ids"]]

    async def feedback(self, record_id: str, value: Union[int, bool], text: Optional[str] = None) -> Dict[str, Json]:
        """Sets or replaces a record's feedback: 1 (up), 0 (neutral), -1 (down)."""
        body = _wire.encode(_wire.feedback_body(record_id, value, text))
        result: Dict[str, Json] = await self.request("POST", "/v1/feedback", body)
        return result

    async def route(self, unit: Optional[str] = None) -> Dict[str, Json]:
        """Which model serves a request; sticky for a unit."""
        result: Dict[str, Json] = await self.request("GET", "/v1/route", params={"unit": unit})
        return result

    async def stats(
        self,
        since: Optional[str] = None,
        until: Optional[str] = None,
        model: Optional[str] = None,
        by_model: bool = False,
    ) -> Dict[str, Json]:
        """Usage statistics, as ``afs stats --json``."""
        params: Dict[str, Param] = {"since": since, "until": until, "model": model, "by_model": by_model or None}
        result: Dict[str, Json] = await self.request("GET", "/v1/stats", params=params)
        return result

    async def series(self, hours: Optional[int] = None, model: Optional[str] = None) -> Dict[str, Json]:
        """Hourly statistics per model over the last ``hours`` hours."""
        result: Dict[str, Json] = await self.request("GET", "/v1/series", params={"hours": hours, "model": model})
        return result

    async def status(self) -> Dict[str, Json]:
        """The status summary and the server's own state."""
        result: Dict[str, Json] = await self.request("GET", "/v1/status")
        return result

    async def experiment(self) -> Dict[str, Json]:
        """The running experiment and the judge's comparison now."""
        result: Dict[str, Json] = await self.request("GET", "/v1/experiment")
        return result

    async def health(self) -> Dict[str, Json]:
        """``GET /healthz``."""
        result: Dict[str, Json] = await self.request("GET", "/healthz")
        return result
