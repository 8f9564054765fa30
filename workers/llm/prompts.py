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
    "cinema": {"movies": ["movie_id", "title", "director", "release_year", "rating", "budget"],
               "screenings": ["screening_id", "movie_id", "hall", "start_time", "tickets_sold"],
               "reviews": ["review_id", "movie_id", "reviewer", "stars"]},
    "bank": {"accounts": ["account_id", "owner", "branch", "balance", "opened_year"],
             "transactions": ["transaction_id", "account_id", "amount", "kind", "transaction_date"],
             "branches": ["branch_id", "city", "manager", "staff_count"]},
    "zoo": {"animals": ["animal_id", "name", "species", "weight", "age", "enclosure_id"],
            "enclosures": ["enclosure_id", "zone", "area", "capacity"],
            "keepers": ["keeper_id", "name", "enclosure_id", "years_experience"]},
    "restaurant": {"dishes": ["dish_id", "name", "cuisine", "price", "calories"],
                   "tables": ["table_id", "seats", "section"],
                   "bookings": ["booking_id", "table_id", "guest_name", "party_size", "booking_date"]},
    "university": {"professors": ["professor_id", "name", "faculty", "salary", "tenure_year"],
                   "papers": ["paper_id", "professor_id", "title", "citations", "published_year"],
                   "grants": ["grant_id", "professor_id", "agency", "amount"]},
    "weather": {"stations": ["station_id", "name", "region", "elevation"],
                "readings": ["reading_id", "station_id", "temperature", "rainfall", "reading_date"],
                "alerts": ["alert_id", "station_id", "level", "issued_date"]},
    "hotel": {"rooms": ["room_id", "floor", "room_type", "nightly_rate"],
              "guests": ["guest_id", "name", "nationality", "loyalty_points"],
              "stays": ["stay_id", "guest_id", "room_id", "nights", "check_in"]},
    "farm": {"fields": ["field_id", "crop", "hectares", "soil_type"],
             "harvests": ["harvest_id", "field_id", "tons", "harvest_year"],
             "workers": ["worker_id", "name", "field_id", "hourly_wage"]},
    "games": {"games": ["game_id", "title", "studio", "release_year", "price", "score"],
              "players": ["player_id", "nickname", "country", "level"],
              "sessions": ["session_id", "player_id", "game_id", "minutes", "session_date"]},
    "transit": {"routes": ["route_id", "name", "mode", "length_km"],
                "stops": ["stop_id", "name", "district", "daily_riders"],
                "trips": ["trip_id", "route_id", "departure", "passengers", "delay_minutes"]},
    "museum": {"artworks": ["artwork_id", "title", "artist", "year_created", "value"],
               "galleries": ["gallery_id", "name", "floor", "visitors_per_day"],
               "exhibitions": ["exhibition_id", "gallery_id", "theme", "start_date", "ticket_price"]},
    "clinic": {"pets": ["pet_id", "name", "species", "age", "owner_id"],
               "owners": ["owner_id", "name", "phone", "city"],
               "appointments": ["appointment_id", "pet_id", "vet", "fee", "appointment_date"]},
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
    "Show the {col} of the {table} with the lowest {num}.",
    "How many different {col} values do the {table} have?",
    "Which {col} appears most often among the {table}?",
    "List the {col} of {table} whose {num} is between 10 and 50.",
    "What are the top 5 {table} by {num}? Give their {col}.",
    "Show each {col} with the number of {table} and their average {num}.",
    "Find the {table} whose {col} starts with the letter A.",
    "What is the sum of {num} over all {table}?",
    "List the {col} of {table} whose {num} is above the average {num}.",
    "Which {col} values have more than 3 {table}?",
]

CHAT_TOPICS = [
    "photosynthesis", "the water cycle", "how vaccines work", "compound interest", "the French revolution",
    "black holes", "machine learning", "healthy sleep habits", "how to brew coffee", "recycling plastic",
    "the history of the internet", "volcanoes", "learning a new language", "time management", "the moon landing",
    "electric cars", "how bridges stay up", "the human heart", "saving money", "writing a good email",
    "climate change", "the Roman empire", "public speaking", "how rainbows form", "gardening for beginners",
    "the stock market", "cloud computing", "dinosaurs", "meditation", "baking bread",
    "earthquakes", "the solar system", "chess openings", "how batteries work", "the printing press",
    "composting", "first aid for burns", "the immune system", "renewable energy", "ancient Egypt",
    "how a bill becomes law", "the theory of evolution", "budgeting for students", "how GPS works",
    "the Olympic games", "coral reefs", "writing a resume", "the Great Wall of China", "how computers store data",
    "camping safety", "the Renaissance", "how airplanes are built", "taking care of a puppy", "solar panels",
    "the human brain", "how to learn to swim", "inflation", "the periodic table", "making friends as an adult",
    "how wind turbines work",
]
CHAT_TEMPLATES = [
    "Explain {topic} in simple terms.",
    "Give me three facts about {topic}.",
    "Write a short paragraph about {topic}.",
    "What should a beginner know about {topic}?",
    "Why does {topic} matter?",
    "Summarize the main ideas of {topic} in a few sentences.",
    "What are common misconceptions about {topic}?",
    "Describe {topic} to a ten-year-old.",
    "List five key terms related to {topic} and define them.",
    "What questions would an expert ask about {topic}?",
]


def describe_schema(tables: dict[str, list[str]]) -> str:
    return "\n".join(f"{table}({', '.join(columns)})" for table, columns in tables.items())


def training_prompts() -> list[list[dict]]:
    """Deterministic chat prompts (SQL and general chat, interleaved) the draft head is trained on:
    every question template over every table of every training schema, every chat template over
    every topic."""
    sql = []
    for tables in TRAINING_SCHEMAS.values():
        schema = describe_schema(tables)
        for (table, columns), (t, template) in itertools.product(tables.items(), enumerate(QUESTION_TEMPLATES)):
            texts = [c for c in columns[1:] if not c.endswith(("_id", "year", "age"))] or columns[1:]
            nums = [c for c in reversed(columns) if not c.endswith("_id")] or columns[-1:]
            text_col = texts[t % len(texts)]
            num_col = next((c for c in nums[t % len(nums):] + nums if c != text_col), nums[0])
            sql.append(sql_messages(schema, template.format(table=table, col=text_col, num=num_col)))
    chat = [chat_messages(t.format(topic=topic)) for topic, t in itertools.product(CHAT_TOPICS, CHAT_TEMPLATES)]
    return [m for pair in itertools.zip_longest(sql, chat) for m in pair if m is not None]


def benchmark_prompts() -> list[dict]:
    """Held-out prompts: ``{"kind": "sql"|"chat", "messages": [...]}``."""
    data = json.loads((DATA_DIR / "specdec_prompts.json").read_text())
    prompts = [{"kind": "sql", "messages": sql_messages(data["schemas"][q["schema"]], q["question"])} for q in data["sql"]]
    prompts += [{"kind": "chat", "messages": chat_messages(text)} for text in data["chat"]]
    return prompts
