"""The hidden world of the self-improving example: support questions and their true topic.

A question mentions two or three keywords of one topic among filler words. The topic is the
hidden truth: simulated users are satisfied when the model names it, and the held-out
questions, which combine the keywords in ways no training question does, measure whether a
model has learnt the keywords rather than memorised questions. Deterministic for a seed.
"""

import random
from typing import List, Tuple

TOPICS = {
    "billing": ["invoice", "charge", "refund", "payment", "card", "receipt", "overcharged",
                "subscription", "price", "billed", "discount", "tax"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "shipped", "package", "arrive",
                 "dispatch", "address", "postage", "late", "warehouse"],
    "account": ["password", "login", "username", "email", "profile", "locked", "signup",
                "verify", "reset", "twofactor", "settings", "delete"],
    "technical": ["crash", "error", "bug", "slow", "install", "update", "freeze", "screen",
                  "battery", "wifi", "sync", "app"],
    "returns": ["return", "exchange", "broken", "damaged", "wrong", "size", "faulty",
                "replacement", "label", "unused", "warranty", "defect"],
    "sales": ["quote", "bulk", "wholesale", "demo", "trial", "enterprise", "pricing",
              "partner", "catalog", "order", "plan", "upgrade"],
}

FILLER = ["hi", "please", "help", "my", "the", "is", "with", "a", "an", "i", "need",
          "about", "question", "thanks", "hello", "urgent", "today", "again", "still", "why"]

LABELS = sorted(TOPICS)


def question(rng: random.Random, topic: str, keywords: List[str]) -> str:
    words = keywords + rng.sample(FILLER, 4)
    rng.shuffle(words)
    return " ".join(words)


def answer_text(topic: str) -> str:
    """What the model says: the topic it routes the question to."""
    return f"This is a {topic} question: I am forwarding it to the {topic} team."


def topic_of_answer(text: str) -> str:
    for topic in LABELS:
        if f" {topic} " in f" {text} ":
            return topic
    return ""


def split(seed: int = 7) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """(traffic pool, held-out set): questions with their true topic. A keyword pair used in
    a held-out question never appears together in the pool."""
    rng = random.Random(seed)
    pool, held_out = [], []
    for topic, keywords in TOPICS.items():
        pairs = [(a, b) for i, a in enumerate(keywords) for b in keywords[i + 1:]]
        rng.shuffle(pairs)
        held_pairs, pool_pairs = pairs[:12], pairs[12:]
        for a, b in held_pairs:
            held_out.append((question(rng, topic, [a, b]), topic))
        for a, b in pool_pairs:
            extra = [rng.choice(keywords)] if rng.random() < 0.3 else []
            pool.append((question(rng, topic, [a, b] + extra), topic))
    rng.shuffle(pool)
    return pool, held_out
