"""Prompts for training the draft head and for the speculative-decoding benchmark.

Two disjoint sets: the draft head is trained on text the model writes for ``training_prompts()``
(schemas and topics of their own), and the benchmark measures on ``benchmark_prompts()`` from
``data/specdec_prompts.json``, whose schemas, questions and topics the head never saw.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SQL_SYSTEM = "You write one SQLite query that answers the question. Use only the tables and columns listed."


def sql_messages(schema: str, question: str) -> list[dict]:
    return [
        {"role": "system", "content": SQL_SYSTEM},
        {"role": "user", "content": f"Tables:\n{schema}\nQuestion: {question}"},
    ]


def chat_messages(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# Training schemas: table -> columns (the first column is the key); questions are built from them.
TRAINING_SCHEMAS: dict[str, dict[str, list[str]]] = {
    "library": {"books": ["book_id", "title", "author_id", "year", "pages", "genre"],
                "authors": ["author_id", "name", "country", "birth_year"],
                "loans": ["loan_id", "book_id", "member_id", "loan_date", "return_date"]},
    "hospital": {"patients": ["patient_id", "name", "age", "city", "insurance"],
                 "doctors": ["doctor_id", "name", "specialty", "salary"],
                 "visits": ["visit_id", "patient_id", "doctor_id", "visit_date", "cost"]},
    "school": {"students": ["student_id", "name", "grade", "age", "club"],
               "courses": ["course_id", "title", "credits", "teacher"],
               "enrollments": ["student_id", "course_id", "score", "semester"]},
    "shop": {"products": ["product_id", "name", "category", "price", "stock"],
             "orders": ["order_id", "customer_id", "order_date", "total"],
             "customers": ["customer_id", "name", "email", "city"]},
    "airline": {"flights": ["flight_id", "origin", "destination", "departure_time", "price", "aircraft_id"],
                "aircraft": ["aircraft_id", "model", "seats", "year_built"],
                "passengers": ["passenger_id", "name", "flight_id", "seat"]},
    "music": {"artists": ["artist_id", "name", "genre", "debut_year"],
              "albums": ["album_id", "artist_id", "title", "release_year", "sales"],
              "tracks": ["track_id", "album_id", "title", "duration_seconds"]},
    "sports": {"teams": ["team_id", "name", "city", "founded"],
               "players": ["player_id", "name", "team_id", "position", "goals", "salary"],
               "matches": ["match_id", "home_team_id", "away_team_id", "match_date", "attendance"]},
    "company": {"employees": ["employee_id", "name", "department_id", "salary", "hire_date", "manager_id"],
                "departments": ["department_id", "name", "budget", "location"],
                "projects": ["project_id", "name", "department_id", "deadline"]},
}

QUESTION_TEMPLATES = [
    "How many {table} are there?",
    "List the {col} of all {table}.",
    "What is the average {num} of {table}?",
    "Which {table} have the highest {num}? Show their {col}.",
    "Show the {col} and {num} of {table} ordered by {num} descending.",
    "What is the total {num} for each {col} in {table}?",
    "Find the {col} of {table} whose {num} is greater than 100.",
    "Count the {table} grouped by {col}.",
    "What is the minimum and maximum {num} of {table}?",
    "List the distinct {col} values in {table}.",
]

CHAT_TOPICS = [
    "photosynthesis", "the water cycle", "how vaccines work", "compound interest", "the French revolution",
    "black holes", "machine learning", "healthy sleep habits", "how to brew coffee", "recycling plastic",
    "the history of the internet", "volcanoes", "learning a new language", "time management", "the moon landing",
    "electric cars", "how bridges stay up", "the human heart", "saving money", "writing a good email",
    "climate change", "the Roman empire", "public speaking", "how rainbows form", "gardening for beginners",
    "the stock market", "cloud computing", "dinosaurs", "meditation", "baking bread",
]
CHAT_TEMPLATES = [
    "Explain {topic} in simple terms.",
    "Give me three facts about {topic}.",
    "Write a short paragraph about {topic}.",
    "What should a beginner know about {topic}?",
]


def describe_schema(tables: dict[str, list[str]]) -> str:
    return "\n".join(f"{table}({', '.join(columns)})" for table, columns in tables.items())


def training_prompts() -> list[list[dict]]:
    """Deterministic chat prompts (SQL and general chat, interleaved) the draft head is trained on."""
    sql = []
    for tables in TRAINING_SCHEMAS.values():
        schema = describe_schema(tables)
        for (table, columns), template in zip(itertools.cycle(tables.items()), QUESTION_TEMPLATES):
            text_col = next(c for c in columns[1:] if not c.endswith(("_id", "year", "age")))
            num_col = next((c for c in reversed(columns) if c not in (text_col,) and not c.endswith("_id")), columns[-1])
            sql.append(sql_messages(schema, template.format(table=table, col=text_col, num=num_col)))
    chat = [chat_messages(t.format(topic=topic)) for topic, t in zip(CHAT_TOPICS, itertools.cycle(CHAT_TEMPLATES))]
    return [m for pair in itertools.zip_longest(sql, chat) for m in pair if m is not None]


def benchmark_prompts() -> list[dict]:
    """Held-out prompts: ``{"kind": "sql"|"chat", "messages": [...]}``."""
    data = json.loads((DATA_DIR / "specdec_prompts.json").read_text())
    prompts = [{"kind": "sql", "messages": sql_messages(data["schemas"][q["schema"]], q["question"])} for q in data["sql"]]
    prompts += [{"kind": "chat", "messages": chat_messages(text)} for text in data["chat"]]
    return prompts
