"""Preference tuning with TRL's DPOTrainer on a dpo or openai-dpo file from `afs generate`.

Run by afs as, e.g.:

    afs retrain --train-cmd 'python examples/trainers/trl_dpo.py --model Qwen/Qwen2.5-0.5B-Instruct'

with `format = "dpo"` (or "openai-dpo") in [generator]. `--check-data` only loads and
checks the dataset. The reference model is a frozen copy of --model (TRL's default).
"""

import afs_data


def trl_classes():
    from trl import DPOConfig, DPOTrainer

    return DPOConfig, DPOTrainer


if __name__ == "__main__":
    afs_data.run("dpo", __doc__.splitlines()[0], trl_classes)
