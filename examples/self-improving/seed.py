"""The examples the first model is trained on: one question per topic, as a team would
start with a handful of hand-written ones."""

SEED_EXAMPLES = [
    ("hi my invoice is wrong", "billing"),
    ("where is my parcel", "shipping"),
    ("i forgot my password", "account"),
    ("the app keeps crashing", "technical"),
    ("i want to return this", "returns"),
    ("can i get a quote", "sales"),
]
