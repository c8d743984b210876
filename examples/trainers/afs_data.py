"""Shared part of the TRL trainer examples: afs's trainer protocol and dataset loading.

afs runs a trainer command with the dataset in AFS_DATA_PATH, an empty model directory in
AFS_OUTPUT_DIR and a result file path in AFS_RESULT_PATH (see `afs retrain --help`). The
trainer reports success by exiting 0 with a JSON object holding `model_path`, written to
the result file and printed as the last line of stdout. Nothing here imports torch: the
`--check-data` mode of each script uses only this module, `datasets` and TRL's data
utilities, so it runs on a machine without a GPU stack.
"""

import argparse
import json
import os
import sys

# What each trainer reads, by afs format. The sets are TRL's dataset types: SFT takes
# language modelling (`text`), prompt-completion and conversational (`messages`) data;
# DPO preference pairs; KTO unpaired labelled completions.
ACCEPTED = {
    "sft": {"chatml", "openai", "sharegpt", "completion", "text"},
    "dpo": {"dpo", "openai-dpo"},
    "kto": {"kto"},
}


def arguments(trainer, description):
    """The command line shared by the three scripts; the paths default to afs's variables."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=os.environ.get("AFS_DATA_PATH"), help="afs's training file (default $AFS_DATA_PATH)")
    parser.add_argument("--output-dir", default=os.environ.get("AFS_OUTPUT_DIR"), help="where to save the model (default $AFS_OUTPUT_DIR)")
    parser.add_argument("--result", default=os.environ.get("AFS_RESULT_PATH"), help="where to write the JSON result (default $AFS_RESULT_PATH)")
    parser.add_argument("--model", default=os.environ.get("AFS_BASE_MODEL"), help="base model name or path (default $AFS_BASE_MODEL)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: TRL's for this trainer")
    parser.add_argument("--check-data", action="store_true", help="load and check the dataset, print a JSON summary and stop (no torch needed)")
    args = parser.parse_args()
    if not args.data:
        parser.error("no dataset: give --data or set AFS_DATA_PATH")
    if not args.check_data and not (args.output_dir and args.model):
        parser.error("training needs --output-dir (or AFS_OUTPUT_DIR) and --model (or AFS_BASE_MODEL)")
    args.trainer = trainer
    return args


def detect_format(columns):
    """afs's format of a file, from its columns (each format has its own keys)."""
    columns = set(columns)
    if "messages" in columns:
        return "chatml" if "metadata" in columns else "openai"
    if "conversations" in columns:
        return "sharegpt"
    if "input" in columns and "preferred_output" in columns:
        return "openai-dpo"
    if {"prompt", "chosen", "rejected"} <= columns:
        return "dpo"
    if {"prompt", "completion", "label"} <= columns:
        return "kto"
    if {"prompt", "completion"} <= columns:
        return "completion"
    if "instruction" in columns:
        return "alpaca"
    if "text" in columns:
        return "text"
    return None


def load(path, trainer):
    """afs's file as the dataset `trainer` takes, in TRL's column names.

    chatml's metadata is dropped (trainers do not read it), sharegpt is renamed to TRL's
    `messages` by TRL's own converter, and openai-dpo becomes TRL's conversational
    preference form. Exits with a message when the file is empty, not one of the formats
    this trainer reads, or of more than one shape.
    """
    import datasets
    from trl.data_utils import is_conversational, maybe_convert_to_chatml

    if os.path.getsize(path) == 0:
        sys.exit(f"{path} is empty: afs wrote no samples (see the warning of `afs generate`)")
    ds = datasets.load_dataset("json", data_files=path, split="train")
    fmt = detect_format(ds.column_names)
    if fmt not in ACCEPTED[trainer]:
        wanted = ", ".join(sorted(ACCEPTED[trainer]))
        sys.exit(f"{path} is in format {fmt or 'unknown'}; the {trainer} trainer reads {wanted} (afs generate --format ...)")
    if fmt == "chatml":
        ds = ds.remove_columns("metadata")
    elif fmt == "sharegpt":
        ds = ds.map(maybe_convert_to_chatml, remove_columns=["conversations"])
    elif fmt == "openai-dpo":
        ds = ds.map(
            lambda row: {"prompt": row["input"]["messages"], "chosen": row["preferred_output"], "rejected": row["non_preferred_output"]},
            remove_columns=["input", "preferred_output", "non_preferred_output"],
        )
    shapes = {is_conversational(row) for row in ds}
    if len(shapes) != 1:
        sys.exit(f"{path} mixes plain and conversational rows; regenerate it with afs generate --shape")
    return ds, fmt, shapes.pop()


def check_data(args):
    ds, fmt, conversational = load(args.data, args.trainer)
    print(json.dumps({"ok": True, "trainer": args.trainer, "format": fmt, "rows": len(ds), "columns": ds.column_names, "conversational": conversational}))


def report(args, train_result):
    """Writes afs's result: `model_path` and the training metrics."""
    metrics = {k: v for k, v in (train_result.metrics or {}).items() if isinstance(v, (int, float))}
    result = {"model_path": os.path.abspath(args.output_dir), "metrics": metrics}
    text = json.dumps(result)
    if args.result:
        with open(args.result, "w") as f:
            f.write(text + "\n")
    print(text)


def run(trainer, description, trl_classes, check=None):
    """What every script does: read the command line; with `--check-data`, load and check
    the dataset and stop; else load it, let `check(args, dataset)` refuse it (it exits with
    a message), then train with the config and trainer classes `trl_classes()` returns
    (imported only here, so the check mode needs no torch), save the model and its
    tokenizer, and report the result to afs."""
    args = arguments(trainer, description)
    if args.check_data:
        check_data(args)
        return
    train_dataset, _, _ = load(args.data, trainer)
    if check is not None:
        check(args, train_dataset)
    config_class, trainer_class = trl_classes()
    config = config_class(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        report_to=[],
        save_strategy="no",
        **({"learning_rate": args.learning_rate} if args.learning_rate else {}),
    )
    trl_trainer = trainer_class(model=args.model, args=config, train_dataset=train_dataset)
    result = trl_trainer.train()
    trl_trainer.save_model(args.output_dir)
    trl_trainer.processing_class.save_pretrained(args.output_dir)
    report(args, result)
