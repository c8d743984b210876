"""Supervised fine-tuning with TRL's SFTTrainer on a file from `afs generate`.

Reads chatml, openai, sharegpt, completion or text files. Run by afs as, e.g.:

    afs retrain --train-cmd 'python examples/trainers/trl_sft.py --model Qwen/Qwen2.5-0.5B-Instruct'

(the dataset, model directory and result paths come from AFS_DATA_PATH, AFS_OUTPUT_DIR and
AFS_RESULT_PATH). `--check-data` only loads and checks the dataset. Conversational files
need a model with a chat template.
"""

import afs_data


def trl_classes():
    from trl import SFTConfig, SFTTrainer

    return SFTConfig, SFTTrainer


if __name__ == "__main__":
    afs_data.run("sft", __doc__.splitlines()[0], trl_classes)
