"""`AfsClient`: the synchronous client, over kept-alive `http.client` connections."""

from __future__ import annotations

import http.client
import socket
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

from . import _wire
from ._errors import AfsError
from ._wire import Json, Param

if TYPE_CHECKING:
    from typing_extensions import Unpack

# A kept-alive connection the server closed while it sat idle (after the server's
# keep-alive time, `--header-timeout`) fails at once with one of these; the server never
# read the request, so it is sent again on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class AfsClient:
    """Logs model calls and feedback to ``afs serve``, asks it where to route requests, and
    reads its statistics. Safe to share between threads.

    Connections are kept alive and reused: a call takes an idle connection (or opens one),
    and puts it back when the answer is read, keeping at most ``max_idle_connections``.
    Every failure raises `AfsError`, also when the server cannot be reached.
    """

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
        self._lock = threading.Lock()
        self._idle: List[http.client.HTTPConnection] = []
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

    def close(self) -> None:
        """Closes the idle connections; later calls raise `AfsError` (kind ``closed``)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> "AfsClient":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def _forget_connections(self) -> None:
        """Drops the idle connections without closing them (after a fork: they are the
        parent's). The lock is replaced, not taken: a thread of the parent may have held it
        at the fork."""
        self._lock = threading.Lock()
        self._idle = []

    def _acquire(self) -> Tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise AfsError(None, "the client is closed", "closed")
            if self._idle:
                return self._idle.pop(), True
            self._opened += 1
        cls = http.client.HTTPSConnection if self._endpoint.scheme == "https" else http.client.HTTPConnection
        conn = cls(self._endpoint.host, self._endpoint.port, timeout=self._timeout)
        try:
            conn.connect()
        except (TimeoutError, socket.timeout):
            conn.close()
            raise AfsError(None, f"cannot reach afs at {self.base_url}: timed out", "timeout") from None
        except OSError as err:
            conn.close()
            raise AfsError(None, f"cannot reach afs at {self.base_url}: {err}", "connection") from None
        return conn, False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        params: Optional[Mapping[str, Param]] = None,
    ) -> Json:
        """Sends one request (``body`` is JSON text) and returns the answer's JSON."""
        request_target = _wire.target(self._endpoint, path, params)
        request_headers = _wire.headers(self._endpoint, self._token, body)
        for attempt in (0, 1):
            conn, reused = self._acquire()
            try:
                conn.request(method, request_target, body=body, headers=request_headers)
                response = conn.getresponse()
                raw = response.read()
            except _STALE as err:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise AfsError(None, f"connection to {self.base_url} lost: {err!r}", "connection") from None
            except (TimeoutError, socket.timeout):
                conn.close()
                raise AfsError(
                    None, f"no answer from {self.base_url} within {self._timeout} s", "timeout"
                ) from None
            except OSError as err:
                conn.close()
                raise AfsError(None, f"connection to {self.base_url} failed: {err}", "connection") from None
            except http.client.HTTPException as err:
                conn.close()
                raise AfsError(None, f"not an HTTP answer: {err!r}", "invalid_response") from None
            if response.will_close:
                conn.close()
            else:
                self._release(conn)
            return _wire.answer(response.status, raw)
        raise AssertionError("unreachable")

    def log(
        self,
        query: Optional[str],
        response: Optional[str],
        model: str,
        **fields: Unpack[_wire.LogFields],
    ) -> str:
        """Logs one call and returns its id, once the server has committed it. To keep the
        network off a request path, use `BatchLogger` instead."""
        body = _wire.record(query, response, model, **fields)
        return str(self.request("POST", "/v1/usage", _wire.encode(body))["id"])

    def log_batch(self, records: Iterable[Mapping[str, Any]]) -> List[str]:
        """Logs many calls (dicts with the keys of `log`) in one transaction and returns their
        ids in order. One bad record refuses the whole batch, naming ``records[i].key``."""
        return self.log_batch_json(_wire.encode(list(records)))

    def log_batch_json(self, body: bytes) -> List[str]:
        """`log_batch` with the JSON array already encoded."""
        return [str(i) for i in self.request("POST", "/v1/usage", body)["ids"]]

    def feedback(self, record_id: str, value: Union[int, bool], text: Optional[str] = None) -> Dict[str, Json]:
        """Sets or replaces a record's feedback: 1 (up), 0 (neutral), -1 (down)."""
        body = _wire.encode(_wire.feedback_body(record_id, value, text))
        result: Dict[str, Json] = self.request("POST", "/v1/feedback", body)
        return result

    def route(self, unit: Optional[str] = None) -> Dict[str, Json]:
        """Which model serves a request (``model``, ``arm``, ``version_id``, ...): sticky for a
        unit (user or session id), a weighted random draw without one."""
        result: Dict[str, Json] = self.request("GET", "/v1/route", params={"unit": unit})
        return result

    def stats(
        self,
        since: Optional[str] = None,
        until: Optional[str] = None,
        model: Optional[str] = None,
        by_model: bool = False,
    ) -> Dict[str, Json]:
        """Usage statistics, as ``afs stats --json`` (an object keyed by model with
        ``by_model``)."""
        params: Dict[str, Param] = {"since": since, "until": until, "model": model, "by_model": by_model or None}
        result: Dict[str, Json] = self.request("GET", "/v1/stats", params=params)
        return result

    def series(self, hours: Optional[int] = None, model: Optional[str] = None) -> Dict[str, Json]:
        """Hourly statistics per model over the last ``hours`` hours."""
        result: Dict[str, Json] = self.request("GET", "/v1/series", params={"hours": hours, "model": model})
        return result

    def status(self) -> Dict[str, Json]:
        """The status summary, as ``afs status --json``, and the server's own state."""
        result: Dict[str, Json] = self.request("GET", "/v1/status")
        return result

    def experiment(self) -> Dict[str, Json]:
        """The running experiment and the judge's comparison now."""
        result: Dict[str, Json] = self.request("GET", "/v1/experiment")
        return result

    def health(self) -> Dict[str, Json]:
        """``GET /healthz``: the server is up (does not touch its database)."""
        result: Dict[str, Json] = self.request("GET", "/healthz")
        return result
