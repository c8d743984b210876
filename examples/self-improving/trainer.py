"""The example's trainer, following afs's trainer protocol: afs runs it with the dataset it
generated (AFS_DATA_PATH: the `completion` format, thumbs-up records above the quality floor)
and an empty model directory (AFS_OUTPUT_DIR); it trains a new model from scratch on that
data plus the seed examples, and prints {"model_path": ...} as its last line."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model import Model  # noqa: E402
from task import topic_of_answer  # noqa: E402
from seed import SEED_EXAMPLES  # noqa: E402


def main() -> None:
    data = os.environ["AFS_DATA_PATH"]
    out = os.environ["AFS_OUTPUT_DIR"]
    examples = list(SEED_EXAMPLES)
    with open(data) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            topic = topic_of_answer(row["completion"])
            if topic:
                examples.append((row["prompt"].strip(), topic))
    model = Model.train(examples)
    path = os.path.join(out, "model.json")
    model.save(path)
    print(json.dumps({"model_path": path, "train_examples": len(examples)}))


if __name__ == "__main__":
    main()
