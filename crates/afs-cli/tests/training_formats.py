"""Reads afs's training files with the consumers' own data-loading code.

Usage: python training_formats.py SPEC.json TRAINERS_DIR, where SPEC.json is a list of
{"path": ..., "format": ..., "shape": "plain" | "conversational", "accepted_by": [trainer,
...], "refused_by": {trainer: message fragment}} and TRAINERS_DIR is examples/trainers,
whose loading code (afs_data.load, what each script runs before training) must accept the
file for each trainer in accepted_by and refuse it, with that fragment, for each trainer in
refused_by. A file expected to fail the format checks has "bad": true. Each file is loaded
with Hugging Face `datasets` (as every trainer here does), its column types are checked
against what the consumer needs, and TRL's own data utilities (`is_conversational`,
`maybe_convert_to_chatml`, `maybe_apply_chat_template`) are run on every row with a small
local tokenizer whose chat template refuses roles other than system/user/assistant. The
OpenAI formats are checked against the rules of OpenAI's fine-tuning documentation (no
OpenAI code reads files offline). Prints one JSON object per file; exits 1 when any file
fails, naming the file and the problem.
"""

import json
import sys

import datasets
from datasets import Value
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from trl.data_utils import (
    is_conversational,
    maybe_apply_chat_template,
    maybe_convert_to_chatml,
)

datasets.disable_progress_bars()

ROLES = ("system", "user", "assistant")

# A ChatML template, as chat models ship one, that refuses unknown roles (as many do).
TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer():
    model = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=model, unk_token="[UNK]", eos_token="[UNK]"
    )
    tok.chat_template = TEMPLATE
    return tok


STRING = Value("string")


def is_message_list(feature, role_key="role", content_key="content"):
    """A column of message lists as `datasets` types it: List({role: string, content: string})."""
    inner = getattr(feature, "feature", None)
    return (
        type(feature).__name__ in ("List", "Sequence", "LargeList")
        and isinstance(inner, dict)
        and inner.get(role_key) == STRING
        and inner.get(content_key) == STRING
    )


class Failure(Exception):
    pass


def need(condition, message):
    if not condition:
        raise Failure(message)


def check_columns(ds, fmt, shape):
    f = ds.features
    text_columns = {
        "alpaca": ["instruction", "input", "output"],
        "text": ["text"],
    }
    if fmt in ("chatml", "openai"):
        need(is_message_list(f["messages"]), f"messages typed {f['messages']}")
        if fmt == "openai":
            need(list(f) == ["messages"], f"openai lines have keys {list(f)}, not only messages")
        else:
            need("metadata" in f, "chatml without --no-metadata lacks metadata")
    elif fmt == "sharegpt":
        need(is_message_list(f["conversations"], "from", "value"), f"conversations typed {f['conversations']}")
        need(list(f) == ["conversations"], f"sharegpt lines have keys {list(f)}")
    elif fmt in text_columns:
        for column in text_columns[fmt]:
            need(f[column] == STRING, f"{column} typed {f[column]}")
    elif fmt in ("completion", "dpo", "kto"):
        columns = {"completion": ["prompt", "completion"], "dpo": ["prompt", "chosen", "rejected"], "kto": ["prompt", "completion"]}[fmt]
        for column in columns:
            if shape == "plain":
                need(f[column] == STRING, f"{column} typed {f[column]}, not string")
            else:
                need(is_message_list(f[column]), f"{column} typed {f[column]}, not a message list")
        if fmt == "kto":
            need(f["label"] == Value("bool"), f"label typed {f['label']}")
    elif fmt == "openai-dpo":
        need(set(f) == {"input", "preferred_output", "non_preferred_output"}, f"keys {list(f)}")
        need(is_message_list(f["input"]["messages"]), f"input.messages typed {f['input']}")
        for column in ("preferred_output", "non_preferred_output"):
            need(is_message_list(f[column]), f"{column} typed {f[column]}")
    else:
        raise Failure(f"unknown format {fmt}")


def check_openai_row(row, fmt):
    """OpenAI's documented rules for a fine-tuning line."""
    if fmt == "openai":
        messages = row["messages"]
        need(all(set(m) == {"role", "content"} for m in messages), "message keys")
        need(all(m["role"] in ROLES and isinstance(m["content"], str) for m in messages), "roles")
        need(messages[-1]["role"] == "assistant", "the last message is not the assistant's")
    elif fmt == "openai-dpo":
        messages = row["input"]["messages"]
        need(messages and messages[-1]["role"] == "user", "input.messages does not end with a user message")
        need(all(m["role"] in ("system", "user") for m in messages), "input roles")
        for key in ("preferred_output", "non_preferred_output"):
            out = row[key]
            need(len(out) == 1 and out[0]["role"] == "assistant", f"{key} is not one assistant message")


def check_trl_row(row, fmt, shape, tok):
    """TRL's view of the row: conversational or not, and the chat template applied."""
    if fmt == "openai-dpo":
        row = {"prompt": row["input"]["messages"], "chosen": row["preferred_output"], "rejected": row["non_preferred_output"]}
    if fmt == "chatml":
        row = {"messages": row["messages"]}
    row = maybe_convert_to_chatml(dict(row))
    conversational = is_conversational(row)
    if fmt in ("alpaca", "text"):
        return conversational
    if "messages" in row:
        need(all(m["role"] in ROLES for m in row["messages"]), f"roles {[m['role'] for m in row['messages']]}")
    applied = maybe_apply_chat_template(row, tok)
    need(all(isinstance(v, str) for k, v in applied.items() if k != "label"), f"template gave {applied}")
    return conversational


def check_file(spec, tok):
    path, fmt, shape = spec["path"], spec["format"], spec["shape"]
    ds = datasets.load_dataset("json", data_files=path, split="train")
    need(len(ds) > 0, "no rows")
    check_columns(ds, fmt, shape)
    shapes = set()
    for row in ds:
        check_openai_row(row, fmt)
        shapes.add(check_trl_row(row, fmt, shape, tok))
    need(len(shapes) == 1, f"is_conversational differs across rows: {sorted(shapes)}")
    expected = shape == "conversational"
    need(shapes == {expected}, f"is_conversational is {shapes.pop()} for a {shape} file")
    return {"rows": len(ds), "columns": list(ds.features), "conversational": expected,
            "max_user_turns": max(user_turns(row, fmt) for row in ds)}


def user_turns(row, fmt):
    """How many user turns a row's conversation has (multi-turn records give two), as its
    consumer sees them; 0 for formats without message lists."""
    messages = {"chatml": "messages", "openai": "messages", "sharegpt": "conversations"}.get(fmt)
    if messages is None:
        prompt = row.get("prompt")
        turns = prompt if isinstance(prompt, list) else []
    else:
        turns = row[messages]
    role = "from" if fmt == "sharegpt" else "role"
    return sum(1 for t in turns if t[role] == "user")


def check_trainers(spec, afs_data):
    """The example trainers' loading code: accepts or refuses the file as expected."""
    for trainer in spec.get("accepted_by", []):
        try:
            ds, _, conversational = afs_data.load(spec["path"], trainer)
        except SystemExit as refusal:
            raise Failure(f"the {trainer} trainer refused it: {refusal}")
        need(len(ds) > 0, f"the {trainer} trainer loaded no rows")
        need(conversational == (spec["shape"] == "conversational"), f"the {trainer} trainer saw the wrong shape")
    for trainer, fragment in spec.get("refused_by", {}).items():
        try:
            afs_data.load(spec["path"], trainer)
        except SystemExit as refusal:
            need(fragment in str(refusal), f"the {trainer} trainer refused it saying {refusal}")
            continue
        raise Failure(f"the {trainer} trainer accepted it")


def main():
    specs = json.load(open(sys.argv[1]))
    sys.path.insert(0, sys.argv[2])
    import afs_data

    tok = tokenizer()
    failed = 0
    for spec in specs:
        report = {"path": spec["path"]}
        try:
            check_trainers(spec, afs_data)
            report["trainers_ok"] = True
            report.update(check_file(spec, tok))
            report["ok"] = True
        except Exception as err:  # a load error is a failure of that file too
            report.update(ok=False, error=f"{type(err).__name__}: {err}")
        failed += report["ok"] == spec.get("bad", False)
        print(json.dumps(report))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
