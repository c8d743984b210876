#!/usr/bin/env python3
"""A small client for `afs serve`, using only the Python standard library.

Use it from a model server written in Python:

    from afs_client import AfsClient

    afs = AfsClient("http://127.0.0.1:8080", token="s3cret")   # token only if the server has one
    route = afs.route(unit="user-42")                           # which model serves this user
    answer = my_models[route["model"]].generate(query)
    record_id = afs.log(query, answer, route["model"], quality_score=0.85,
                        latency_ms=120.0, unit="user-42")
    ...
    afs.feedback(record_id, 1, text="helpful")                 # thumbs up, later

Run as a script it is a smoke test of a running server: it routes a unit, logs one call
for the model it was routed to (and a batch of two), records feedback on the call, and
prints what it did as one JSON object.

    python3 examples/afs_client.py --url http://127.0.0.1:8080 [--token TOKEN]
"""

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request


class AfsError(Exception):
    """An error answer of the service: HTTP status, message, and the field at fault."""

    def __init__(self, status, message, kind=None, field=None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.kind = kind
        self.field = field


class AfsClient:
    """Logs model calls and feedback to `afs serve` and asks it where to route requests."""

    def __init__(self, base_url="http://127.0.0.1:8080", token=None, timeout=10.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method, path, body=None, params=None):
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace")
            try:
                detail = json.loads(text)
            except ValueError:
                detail = {"error": text}
            raise AfsError(err.code, detail.get("error", text), detail.get("kind"), detail.get("field")) from None

    def log(self, query, response, model, **fields):
        """Logs one call; returns its id once committed.

        Optional fields: quality_score, latency_ms, token_count, unit, expert,
        context_hash, timestamp (RFC 3339), feedback (-1, 0, 1), feedback_text.
        """
        record = {"query": query, "response": response, "model": model}
        record.update({k: v for k, v in fields.items() if v is not None})
        return self._request("POST", "/v1/usage", record)["id"]

    def log_batch(self, records):
        """Logs many calls (dicts with the fields of `log`) in one transaction; returns
        their ids in order. One bad record refuses the whole batch (nothing is written)."""
        return self._request("POST", "/v1/usage", list(records))["ids"]

    def feedback(self, record_id, value, text=None):
        """Sets or replaces the feedback of a record: 1 (up), 0 (neutral), -1 (down)."""
        body = {"id": record_id, "value": value}
        if text is not None:
            body["text"] = text
        return self._request("POST", "/v1/feedback", body)

    def route(self, unit=None):
        """Which model serves a request: {"model", "arm", "version_id", "model_path", ...}.
        Sticky for a unit (user or session id); a weighted random draw without one."""
        return self._request("GET", "/v1/route", params={"unit": unit})

    def stats(self, since=None, until=None, model=None, by_model=False):
        """Usage statistics, as `afs stats --json`."""
        params = {"since": since, "until": until, "model": model, "by_model": "true" if by_model else None}
        return self._request("GET", "/v1/stats", params=params)

    def status(self):
        """The status summary, as `afs status --json`."""
        return self._request("GET", "/v1/status")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Smoke test of a running `afs serve`.")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server's base URL")
    parser.add_argument("--token", default=None, help="bearer token, if the server has tokens")
    parser.add_argument("--unit", default="user-42", help="the unit to route")
    args = parser.parse_args(argv)

    afs = AfsClient(args.url, token=args.token)
    route = afs.route(unit=args.unit)
    record_id = afs.log(
        "What is the 65816?",
        "The 16-bit CPU of the SNES.",
        route["model"],
        quality_score=0.85,
        latency_ms=120.0,
        unit=args.unit,
    )
    feedback = afs.feedback(record_id, 1, text="helpful")
    batch_ids = afs.log_batch([
        {"query": "q1", "response": "r1", "model": route["model"], "quality_score": 0.7},
        {"query": "q2", "response": "r2", "model": route["model"], "feedback": -1},
    ])
    try:
        afs.log("q", "r", route["model"], quality_score=1.5)
        refused = None
    except AfsError as err:
        refused = {"status": err.status, "field": err.field}
    stats = afs.stats(model=route["model"])
    print(json.dumps({
        "route": route,
        "id": record_id,
        "feedback": feedback,
        "batch_ids": batch_ids,
        "refused": refused,
        "stats": stats,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
