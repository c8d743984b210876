"""A real model improving itself through afs, end to end, in about a minute on a CPU.

It starts `afs serve --with-loop` on a new database, registers a model trained on six
hand-written questions as champion, and plays a model server and its users:

* each request is routed by afs (`GET /v1/route`, sticky per user), answered by the model
  file afs names, and logged through `afs serve` with the Python client, with a quality score
  from a noisy grader and the user's thumbs (up when the answer names the question's hidden
  topic, mostly; down when it does not, mostly);
* meanwhile afs's loop does the rest: its trigger fires on new scored records, it generates a
  training file from the thumbs-up records (`completion` format) and runs `trainer.py` on it,
  deploys the new model as challenger with half of the traffic, and promotes or rolls it back
  when its judge decides.

At the end it measures, on held-out questions (keyword pairs no training question has), the
champion at the start and at the end, and each model every promotion replaced and promoted.
It prints one JSON object and exits 0 when the final champion is better than the first and
every promotion chose the better model (1 otherwise).

Needs: the `afs` binary (AFS_BIN, or `afs` on PATH) and the afs_client package
(python/afs-client; on PYTHONPATH or installed).
"""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from afs_client import AfsClient  # noqa: E402
from model import Model  # noqa: E402
from seed import SEED_EXAMPLES  # noqa: E402
from task import answer_text, split, topic_of_answer  # noqa: E402

MAX_REQUESTS = int(os.environ.get("SELF_IMPROVING_MAX_REQUESTS", "12000"))
MAX_SECONDS = float(os.environ.get("SELF_IMPROVING_MAX_SECONDS", "150"))
PROMOTIONS_WANTED = int(os.environ.get("SELF_IMPROVING_PROMOTIONS", "2"))
# Requests a second at most: the loop checks every second, so it sees traffic arrive.
RATE = float(os.environ.get("SELF_IMPROVING_RATE", "400"))
USERS = 400


def config(trainer: str) -> str:
    return f"""
[trigger]
enable_sample_count = true
min_new_samples = 150
enable_scheduled = false
enable_quality_drop = false
cooldown_hours = 0.0

[generator]
format = "completion"
min_quality_score = 0.6
min_user_feedback = 1
redact = false

[trainer]
train_cmd = {json.dumps(trainer)}
timeout_secs = 120
min_samples_for_retrain = 20

[abtest]
initial_challenger_traffic = 0.5
min_samples_per_version = 150
min_duration_hours = 0.0
min_units_per_arm = 40
min_feedback_per_version = 40
expected_effect = 0.1
cuped = false

[abtest.guardrails]
latency_ms = false
negative_rate = false

[loop]
check_interval = 1
model_stem = "topic"
"""


def start_server(afs: str, db: str, config_path: str, workdir: str) -> "tuple[subprocess.Popen, str]":
    proc = subprocess.Popen(
        [afs, "--db", db, "--config", config_path, "serve", "--with-loop", "--addr", "127.0.0.1:0"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=open(os.path.join(workdir, "serve.log"), "w"),
        text=True,
    )
    assert proc.stdout is not None
    url = ""
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            url = line.split("listening on ", 1)[1].strip()
            break
        if not line and proc.poll() is not None:
            break
    if not url:
        proc.kill()
        raise SystemExit("afs serve did not start; see serve.log")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, url


def main() -> int:
    afs = os.environ.get("AFS_BIN", "afs")
    rng = random.Random(int(os.environ.get("SELF_IMPROVING_SEED", "11")))
    pool, held_out = split()
    work = tempfile.mkdtemp(prefix="afs-self-improving-")
    # SELF_IMPROVING_DB: another database (e.g. postgres://...) instead of a new SQLite file.
    db = os.environ.get("SELF_IMPROVING_DB") or os.path.join(work, "afs.db")
    seed_path = os.path.join(work, "topic-v1.json")
    Model.train(SEED_EXAMPLES).save(seed_path)
    trainer = f"{shlex.quote(sys.executable)} {shlex.quote(os.path.join(HERE, 'trainer.py'))}"
    config_path = os.path.join(work, "afs.toml")
    with open(config_path, "w") as f:
        f.write(config(trainer))
    subprocess.run([afs, "--db", db, "--config", config_path, "ab", "set-champion", "topic-v1",
                    "--path", seed_path], check=True, stdout=subprocess.DEVNULL)
    proc, url = start_server(afs, db, config_path, work)

    client = AfsClient(url, timeout=30)
    paths = {"topic-v1": seed_path}
    models = {}
    started = time.time()
    requests = 0
    promotions = []
    rollbacks = []
    try:
        while requests < MAX_REQUESTS and time.time() - started < MAX_SECONDS:
            batch = []
            for _ in range(50):
                unit = f"user-{rng.randrange(USERS)}"
                question, topic = rng.choice(pool)
                route = client.route(unit)
                name, path = str(route["model"]), str(route["model_path"])
                paths[name] = path
                if path not in models:
                    models[path] = Model.load(path)
                answer = answer_text(models[path].sample(question, rng))
                correct = topic_of_answer(answer) == topic
                # A noisy grader, and users who mostly say what they think.
                quality = min(1.0, max(0.0, rng.gauss(0.8 if correct else 0.35, 0.1)))
                draw = rng.random()
                feedback = (1 if draw < 0.85 else None) if correct else (-1 if draw < 0.7 else None)
                record = {"query": question, "response": answer, "model": name,
                          "quality_score": round(quality, 3), "unit": unit}
                if feedback is not None:
                    record["feedback"] = feedback
                batch.append(record)
            client.log_batch(batch)
            requests += len(batch)
            behind = requests / RATE - (time.time() - started)
            if behind > 0:
                time.sleep(behind)
            if requests % 200 == 0:
                history = client.request("GET", "/v1/history?kinds=promote,rollback&limit=100&statistics=true")
                events = history["events"]
                promotions = [e for e in events if e["kind"] == "promote"]
                rollbacks = [e for e in events if e["kind"] == "rollback"]
                if len(promotions) >= PROMOTIONS_WANTED and client.status()["status"]["challenger_model"] is None:
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        client.close()

    def accuracy(name: str) -> float:
        return Model.load(paths[name]).accuracy(held_out)

    served_ok = proc.returncode == 0
    status = subprocess.run([afs, "--db", db, "--json", "ab", "status"], check=True,
                            capture_output=True, text=True)
    final = json.loads(status.stdout)["champion"]["name"]
    checked = []
    for e in reversed(promotions):
        stats = e["statistics"]
        before, after = stats["champion"], stats["challenger"]
        checked.append({"promoted": after, "over": before, "held_out_accuracy_before": accuracy(before),
                        "held_out_accuracy_after": accuracy(after)})
    summary = {
        "requests": requests,
        "seconds": round(time.time() - started, 1),
        "first_champion": "topic-v1",
        "final_champion": final,
        "held_out_accuracy_first": accuracy("topic-v1"),
        "held_out_accuracy_final": accuracy(final),
        "promotions": checked,
        "rollbacks": [e["model"] for e in rollbacks],
        "database": db,
        "workdir": work,
        "serve_exit": proc.returncode,
    }
    if not checked:
        # Say where the loop got to, for whoever reads a failed run.
        for what in (["runs"], ["ab", "history", "--limit", "8"]):
            shown = subprocess.run([afs, "--db", db] + what, capture_output=True, text=True)
            print(shown.stdout + shown.stderr, file=sys.stderr)
    print(json.dumps(summary))
    improved = summary["held_out_accuracy_final"] > summary["held_out_accuracy_first"]
    right = all(p["held_out_accuracy_after"] > p["held_out_accuracy_before"] for p in checked)
    return 0 if improved and right and checked and served_ok else 1


if __name__ == "__main__":
    sys.exit(main())
