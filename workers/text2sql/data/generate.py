"""Builds the Text-to-SQL SQLite databases deterministically (same seed, same bytes of data).

Small databases with foreign keys and realistic rows: ``store``, ``school`` and
``library`` hold the dev set's questions (``dev.json``); ``company`` holds only the
few-shot examples (``fewshot.json``), so the dev set measures the pipeline on
databases its prompts never show, as the held-out set does. ``clinic``, ``airline`` and
``music`` hold the validation set (``validation.json``): schemas and wording that nothing
in the pipeline was written while looking at (singular table names, other key names), to
check that a change which helps the dev set is not fitted to it.

Run ``python -m tessera.workers.text2sql.data.generate [DIR]``; without DIR the
databases go to the cache dir (``$TESSERA_CACHE`` or ``~/.cache/tessera``)/text2sql.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
from datetime import date, timedelta
from pathlib import Path

DATABASES = ("store", "school", "library", "company", "clinic", "airline", "music")

FIRST = ["Alice", "Bruno", "Chen", "Dana", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemal", "Lena",
         "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yara", "Zoe"]
LAST = ["Andersen", "Becker", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jensen", "Kim",
        "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Rossi", "Silva", "Tanaka", "Weber"]
CITIES = [("Berlin", "Germany"), ("Munich", "Germany"), ("Paris", "France"), ("Lyon", "France"),
          ("Madrid", "Spain"), ("Rome", "Italy"), ("Vienna", "Austria"), ("Oslo", "Norway")]


def default_dir() -> Path:
    return Path(os.environ.get("TESSERA_CACHE", Path.home() / ".cache" / "tessera")) / "text2sql"


def _people(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if name not in names:
            names.append(name)
    return names


def _day(rng: random.Random, start: date, span_days: int) -> str:
    return (start + timedelta(days=rng.randrange(span_days))).isoformat()


def _store(db: sqlite3.Connection, rng: random.Random) -> None:
    db.executescript("""
    CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, country TEXT, signup_date TEXT);
    CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT, price REAL, stock INTEGER);
    CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), order_date TEXT,
                         status TEXT);
    CREATE TABLE order_items (id INTEGER PRIMARY KEY, order_id INTEGER REFERENCES orders(id),
                              product_id INTEGER REFERENCES products(id), quantity INTEGER);
    """)
    for i, name in enumerate(_people(rng, 30), 1):
        city, country = rng.choice(CITIES)
        db.execute("INSERT INTO customers VALUES (?,?,?,?,?)", (i, name, city, country, _day(rng, date(2021, 1, 1), 1000)))
    catalog = {"Electronics": ["Laptop", "Headphones", "Monitor", "Keyboard", "Webcam", "Tablet"],
               "Books": ["Cookbook", "Novel", "Atlas", "Biography"],
               "Garden": ["Shovel", "Hose", "Planter", "Rake"],
               "Toys": ["Puzzle", "Kite", "Robot Kit", "Board Game"]}
    pid = 0
    for category, items in catalog.items():
        for item in items:
            pid += 1
            price = round(rng.uniform(5, 60) if category != "Electronics" else rng.uniform(30, 1200), 2)
            db.execute("INSERT INTO products VALUES (?,?,?,?,?)", (pid, item, category, price, rng.randrange(0, 200)))
    for oid in range(1, 81):
        db.execute("INSERT INTO orders VALUES (?,?,?,?)", (oid, rng.randrange(1, 31), _day(rng, date(2023, 1, 1), 700),
                                                         rng.choice(["shipped", "shipped", "delivered", "pending", "cancelled"])))
        for _ in range(rng.randrange(1, 4)):
            db.execute("INSERT INTO order_items (order_id, product_id, quantity) VALUES (?,?,?)",
                       (oid, rng.randrange(1, pid + 1), rng.randrange(1, 6)))


def _school(db: sqlite3.Connection, rng: random.Random) -> None:
    db.executescript("""
    CREATE TABLE teachers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, department TEXT, hire_year INTEGER);
    CREATE TABLE courses (id INTEGER PRIMARY KEY, title TEXT NOT NULL, teacher_id INTEGER REFERENCES teachers(id),
                          credits INTEGER);
    CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT NOT NULL, grade_level INTEGER, city TEXT);
    CREATE TABLE enrollments (id INTEGER PRIMARY KEY, student_id INTEGER REFERENCES students(id),
                              course_id INTEGER REFERENCES courses(id), score INTEGER);
    """)
    departments = ["Mathematics", "Science", "History", "Languages"]
    for i, name in enumerate(_people(rng, 10), 1):
        db.execute("INSERT INTO teachers VALUES (?,?,?,?)", (i, name, departments[i % 4], rng.randrange(2001, 2023)))
    titles = ["Algebra", "Geometry", "Statistics", "Biology", "Chemistry", "Physics", "World History",
              "Ancient Rome", "French", "Spanish", "German", "Calculus"]
    for i, title in enumerate(titles, 1):
        db.execute("INSERT INTO courses VALUES (?,?,?,?)", (i, title, rng.randrange(1, 11), rng.choice([2, 3, 4, 5])))
    for i, name in enumerate(_people(rng, 40), 1):
        db.execute("INSERT INTO students VALUES (?,?,?,?)", (i, name, rng.randrange(9, 13), rng.choice(CITIES)[0]))
    for student in range(1, 41):
        for course in rng.sample(range(1, len(titles) + 1), rng.randrange(1, 5)):
            db.execute("INSERT INTO enrollments (student_id, course_id, score) VALUES (?,?,?)",
                       (student, course, rng.randrange(40, 101)))


def _library(db: sqlite3.Connection, rng: random.Random) -> None:
    db.executescript("""
    CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, country TEXT, birth_year INTEGER);
    CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER REFERENCES authors(id),
                        genre TEXT, published_year INTEGER, pages INTEGER);
    CREATE TABLE members (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, join_year INTEGER);
    CREATE TABLE loans (id INTEGER PRIMARY KEY, book_id INTEGER REFERENCES books(id),
                        member_id INTEGER REFERENCES members(id), loan_date TEXT, returned INTEGER);
    """)
    for i, name in enumerate(_people(rng, 15), 1):
        db.execute("INSERT INTO authors VALUES (?,?,?,?)", (i, name, rng.choice(CITIES)[1], rng.randrange(1920, 1990)))
    words = ["Silent", "River", "Winter", "Garden", "Lost", "City", "Night", "Stone", "Glass", "Harbor", "Storm", "Light"]
    genres = ["Fiction", "Mystery", "Science", "History", "Poetry"]
    titles: set[str] = set()
    while len(titles) < 50:
        titles.add(f"The {rng.choice(words)} {rng.choice(words)}")
    for i, title in enumerate(sorted(titles), 1):
        db.execute("INSERT INTO books VALUES (?,?,?,?,?,?)", (i, title, rng.randrange(1, 16), rng.choice(genres),
                                                              rng.randrange(1950, 2024), rng.randrange(90, 700)))
    for i, name in enumerate(_people(rng, 25), 1):
        db.execute("INSERT INTO members VALUES (?,?,?,?)", (i, name, rng.choice(CITIES)[0], rng.randrange(2010, 2025)))
    for i in range(1, 101):
        db.execute("INSERT INTO loans VALUES (?,?,?,?,?)", (i, rng.randrange(1, 51), rng.randrange(1, 26),
                                                           _day(rng, date(2024, 1, 1), 365), rng.choice([0, 1, 1])))


def _company(db: sqlite3.Connection, rng: random.Random) -> None:
    db.executescript("""
    CREATE TABLE departments (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, budget INTEGER);
    CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT NOT NULL, department_id INTEGER REFERENCES departments(id),
                            title TEXT, salary INTEGER, hire_year INTEGER);
    CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT NOT NULL, department_id INTEGER REFERENCES departments(id),
                           status TEXT, cost INTEGER);
    """)
    for i, name in enumerate(["Sales", "Engineering", "Finance", "Support", "Marketing"], 1):
        db.execute("INSERT INTO departments VALUES (?,?,?,?)", (i, name, rng.choice(CITIES)[0], rng.randrange(1, 20) * 50000))
    for i, name in enumerate(_people(rng, 40), 1):
        db.execute("INSERT INTO employees VALUES (?,?,?,?,?,?)", (i, name, rng.randrange(1, 6),
                   rng.choice(["Engineer", "Manager", "Analyst", "Clerk"]), rng.randrange(35, 140) * 1000, rng.randrange(2005, 2025)))
    for i in range(1, 16):
        db.execute("INSERT INTO projects VALUES (?,?,?,?,?)", (i, f"Project {chr(64 + i)}", rng.randrange(1, 6),
                   rng.choice(["active", "done", "planned"]), rng.randrange(10, 500) * 1000))


def _clinic(db: sqlite3.Connection, rng: random.Random) -> None:
    db.executescript("""
    CREATE TABLE doctor (doctor_id INTEGER PRIMARY KEY, full_name TEXT NOT NULL, specialty TEXT, years_experience INTEGER);
    CREATE TABLE patient (patient_id INTEGER PRIMARY KEY, full_name TEXT NOT NULL, birth_year INTEGER, town TEXT,
                          insured INTEGER);
    CREATE TABLE visit (visit_id INTEGER PRIMARY KEY, patient_id INTEGER REFERENCES patient(patient_id),
                        doctor_id INTEGER REFERENCES doctor(doctor_id), visit_date TEXT, fee REAL);
    """)
    specialties = ["Cardiology", "Dermatology", "Pediatrics", "Neurology"]
    for i, name in enumerate(_people(rng, 12), 1):
        db.execute("INSERT INTO doctor VALUES (?,?,?,?)", (i, name, rng.choice(specialties), rng.randrange(1, 35)))
    for i, name in enumerate(_people(rng, 50), 1):
        db.execute("INSERT INTO patient VALUES (?,?,?,?,?)", (i, name, rng.randrange(1940, 2020), rng.choice(CITIES)[0],
                                                             rng.choice([0, 1, 1])))
    for i in range(1, 151):
        db.execute("INSERT INTO visit VALUES (?,?,?,?,?)", (i, rng.randrange(1, 51), rng.randrange(1, 13),
                                                           _day(rng, date(2024, 1, 1), 365), round(rng.uniform(40, 400), 2)))


def _airline(db: sqlite3.Connection, rng: random.Random) -> None:
    db.executescript("""
    CREATE TABLE airport (code TEXT PRIMARY KEY, airport_name TEXT NOT NULL, city TEXT, country TEXT);
    CREATE TABLE aircraft (aircraft_id INTEGER PRIMARY KEY, model TEXT NOT NULL, seats INTEGER, built_year INTEGER);
    CREATE TABLE flight (flight_id INTEGER PRIMARY KEY, flight_number TEXT NOT NULL,
                         origin TEXT REFERENCES airport(code), aircraft_id INTEGER REFERENCES aircraft(aircraft_id),
                         distance_km INTEGER, departure_date TEXT);
    """)
    codes = {"Berlin": "BER", "Munich": "MUC", "Paris": "CDG", "Lyon": "LYS", "Madrid": "MAD", "Rome": "FCO",
             "Vienna": "VIE", "Oslo": "OSL"}
    for city, country in CITIES:
        db.execute("INSERT INTO airport VALUES (?,?,?,?)", (codes[city], f"{city} International", city, country))
    models = ["A320", "A321", "B737", "B787", "E190", "A350"]
    for i in range(1, 21):
        db.execute("INSERT INTO aircraft VALUES (?,?,?,?)", (i, rng.choice(models), rng.choice([100, 150, 180, 240, 300]),
                                                            rng.randrange(1995, 2024)))
    for i in range(1, 121):
        db.execute("INSERT INTO flight VALUES (?,?,?,?,?,?)", (i, f"TS{100 + i}", rng.choice(list(codes.values())),
                   rng.randrange(1, 21), rng.randrange(300, 9000), _day(rng, date(2025, 1, 1), 180)))


def _music(db: sqlite3.Connection, rng: random.Random) -> None:
    db.executescript("""
    CREATE TABLE artist (id INTEGER PRIMARY KEY, artist_name TEXT NOT NULL, origin_country TEXT, formed_year INTEGER);
    CREATE TABLE album (id INTEGER PRIMARY KEY, album_title TEXT NOT NULL, artist_id INTEGER REFERENCES artist(id),
                        release_year INTEGER, label TEXT);
    CREATE TABLE track (id INTEGER PRIMARY KEY, track_title TEXT NOT NULL, album_id INTEGER REFERENCES album(id),
                        duration_seconds INTEGER, plays INTEGER);
    """)
    bands = ["The Quiet Owls", "Neon Harbor", "Paper Giants", "Velvet Static", "Northern Lines", "Iron Meadow",
             "Blue Lantern", "Silver Foxes"]
    for i, band in enumerate(bands, 1):
        db.execute("INSERT INTO artist VALUES (?,?,?,?)", (i, band, rng.choice(CITIES)[1], rng.randrange(1965, 2020)))
    words = ["Echo", "Summer", "Midnight", "Ocean", "Paper", "Golden", "Wild", "Empty", "Electric", "Hollow"]
    labels = ["Sunrise Records", "Blackbird", "Polar Sound"]
    titles: set[str] = set()
    while len(titles) < 24:
        titles.add(f"{rng.choice(words)} {rng.choice(['Dreams', 'Roads', 'Hearts', 'Skies', 'Rooms'])}")
    for i, title in enumerate(sorted(titles), 1):
        db.execute("INSERT INTO album VALUES (?,?,?,?,?)", (i, title, rng.randrange(1, len(bands) + 1),
                                                           rng.randrange(1975, 2025), rng.choice(labels)))
    for i in range(1, 161):
        db.execute("INSERT INTO track VALUES (?,?,?,?,?)", (i, f"{rng.choice(words)} {rng.choice(words)} No. {i}",
                   rng.randrange(1, len(titles) + 1), rng.randrange(120, 480), rng.randrange(0, 100000)))


BUILDERS = {"store": _store, "school": _school, "library": _library, "company": _company, "clinic": _clinic,
            "airline": _airline, "music": _music}


def build(directory: Path | str | None = None, seed: int = 7) -> Path:
    """Writes every database into ``directory`` (rebuilding each from scratch) and returns the directory."""
    out = Path(directory) if directory is not None else default_dir()
    out.mkdir(parents=True, exist_ok=True)
    for offset, name in enumerate(DATABASES):
        target = out / f"{name}.sqlite"
        partial = target.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        db = sqlite3.connect(partial)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            BUILDERS[name](db, random.Random(seed * 100 + offset))
            db.commit()
        finally:
            db.close()
        partial.replace(target)  # readers never see a half-written database
    return out


def ensure_built(directory: Path | str | None = None) -> Path:
    """The directory holding all databases, building them first when any is missing."""
    out = Path(directory) if directory is not None else default_dir()
    if not all((out / f"{name}.sqlite").exists() for name in DATABASES):
        build(out)
    return out


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else None))
