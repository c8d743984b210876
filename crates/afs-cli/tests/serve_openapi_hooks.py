"""Schemathesis hooks for serve_openapi.rs: what docs/openapi.yaml cannot say.

JSON Schema cannot say in which order a conversation's turns may come (a system turn only
first, a tool turn only after an assistant or tool turn, the assistant's answer last with
a user turn before it), nor that `query` and `response` must be its last user turn and
final answer. A generated record that is valid by the schema may break those rules, and
the server rightly refuses it. Before a positive case is sent, its conversations are put
in a valid order and its `query` and `response` set to match; negative cases are sent as
generated, so the server's refusals of them are still checked.
"""

import schemathesis

ROLES = {"system", "user", "assistant", "tool"}


def _well_typed(messages):
    """Whether `messages` is valid by the schema (the only case rewritten here)."""
    return (
        isinstance(messages, list)
        and 2 <= len(messages) <= 1000
        and all(
            isinstance(m, dict)
            and m.get("role") in ROLES
            and isinstance(m.get("content"), str)
            and m["content"].strip()
            for m in messages
        )
    )


def _repair(record):
    """Puts a record's conversation in a valid order and aligns query and response."""
    if not isinstance(record, dict) or not _well_typed(record.get("messages")):
        return
    messages = record["messages"]
    # Keep the contents; give the turns roles a chat can have: an optional system turn
    # first, then user and assistant turns by turns, the last one the assistant's.
    start = 1 if messages[0]["role"] == "system" and len(messages) > 2 else 0
    n = len(messages) - start
    for i, message in enumerate(messages[start:]):
        message["role"] = "assistant" if (n - 1 - i) % 2 == 0 else "user"
    user = [m["content"] for m in messages if m["role"] == "user"][-1]
    answer = messages[-1]["content"]
    for key, text in (("query", user), ("response", answer)):
        if isinstance(record.get(key), str) and record[key].strip():
            record[key] = text


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    if case.operation.path != "/v1/usage" or case.operation.method.lower() != "post":
        return
    body = case.body
    records = body.get("records") if isinstance(body, dict) and "records" in body else body
    for record in records if isinstance(records, list) else [records]:
        _repair(record)
