"""Preference tuning with TRL's KTOTrainer on a kto file from `afs generate`.

Run by afs as, e.g.:

    afs retrain --train-cmd 'python examples/trainers/trl_kto.py --model Qwen/Qwen2.5-0.5B-Instruct'

with `format = "kto"` in [generator]. `--check-data` only loads and checks the dataset.
KTO wants both labels in the data: the script stops when one is missing.
"""

import sys

import afs_data


def both_labels(args, train_dataset):
    """KTO needs thumbs-up and thumbs-down samples."""
    labels = set(train_dataset["label"])
    if labels != {True, False}:
        sys.exit(f"{args.data} has only label {labels}; KTO needs thumbs-up and thumbs-down samples")


def trl_classes():
    from trl import KTOConfig, KTOTrainer

    return KTOConfig, KTOTrainer


if __name__ == "__main__":
    afs_data.run("kto", __doc__.splitlines()[0], trl_classes, check=both_labels)
