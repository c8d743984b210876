"""A tiny model that trains and answers on a CPU in milliseconds: multinomial naive Bayes over
the words of a question. It answers by sampling a topic from its posterior at a temperature
(so it explores, and sometimes gets right what it does not know yet); evaluation takes the most
probable topic."""

import json
import math
import random
from typing import Dict, Iterable, List, Tuple

from task import LABELS


class Model:
    def __init__(self, counts: Dict[str, Dict[str, float]], totals: Dict[str, float], n: Dict[str, float]):
        self.counts = counts  # topic -> word -> count
        self.totals = totals  # topic -> words counted
        self.n = n  # topic -> examples

    @staticmethod
    def train(examples: Iterable[Tuple[str, str]]) -> "Model":
        counts: Dict[str, Dict[str, float]] = {t: {} for t in LABELS}
        totals = {t: 0.0 for t in LABELS}
        n = {t: 0.0 for t in LABELS}
        for text, topic in examples:
            if topic not in counts:
                continue
            n[topic] += 1
            for word in text.lower().split():
                counts[topic][word] = counts[topic].get(word, 0.0) + 1
                totals[topic] += 1
        return Model(counts, totals, n)

    def scores(self, text: str) -> List[float]:
        vocabulary = {w for c in self.counts.values() for w in c} | set(text.lower().split())
        v = max(len(vocabulary), 1)
        all_n = sum(self.n.values())
        out = []
        for topic in LABELS:
            s = math.log((self.n[topic] + 1) / (all_n + len(LABELS)))
            for word in text.lower().split():
                s += math.log((self.counts[topic].get(word, 0.0) + 1) / (self.totals[topic] + v))
            out.append(s)
        return out

    def best(self, text: str) -> str:
        scores = self.scores(text)
        return LABELS[max(range(len(LABELS)), key=lambda i: scores[i])]

    def sample(self, text: str, rng: random.Random, temperature: float = 1.0) -> str:
        scores = [s / temperature for s in self.scores(text)]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        return rng.choices(LABELS, weights=weights)[0]

    def accuracy(self, examples: List[Tuple[str, str]]) -> float:
        return sum(self.best(q) == t for q, t in examples) / len(examples)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"counts": self.counts, "totals": self.totals, "n": self.n}, f)

    @staticmethod
    def load(path: str) -> "Model":
        with open(path) as f:
            data = json.load(f)
        return Model(data["counts"], data["totals"], data["n"])
