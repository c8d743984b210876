"""``python -m afs_client``: a smoke test of a running ``afs serve``. It routes a unit, logs
one call for the model it was routed to (and a batch of two), records feedback on the call,
tries a record the server must refuse, and prints what it did as one JSON object."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

from ._client import AfsClient
from ._errors import AfsError
from ._wire import Json


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m afs_client", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server's base URL")
    parser.add_argument("--token", default=None, help="bearer token, if the server has tokens")
    parser.add_argument("--unit", default="user-42", help="the unit to route")
    args = parser.parse_args(argv)

    with AfsClient(args.url, token=args.token) as afs:
        try:
            route = afs.route(unit=args.unit)
            model = str(route["model"])
            record_id = afs.log(
                "What is the 65816?", "The 16-bit CPU of the SNES.", model,
                quality_score=0.85, latency_ms=120.0, unit=args.unit,
            )
            feedback = afs.feedback(record_id, 1, text="helpful")
            batch_ids = afs.log_batch([
                {"query": "q1", "response": "r1", "model": model, "quality_score": 0.7},
                {"query": "q2", "response": "r2", "model": model, "feedback": -1},
            ])
            refused: Optional[Dict[str, Json]] = None
            try:
                afs.log("q", "r", model, quality_score=1.5)
            except AfsError as err:
                refused = {"status": err.status, "kind": err.kind, "field": err.field}
            stats = afs.stats(model=model)
        except AfsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(json.dumps({
            "route": route,
            "id": record_id,
            "feedback": feedback,
            "batch_ids": batch_ids,
            "refused": refused,
            "stats": stats,
            "connections_opened": afs.connections_opened,
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
