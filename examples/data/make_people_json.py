"""Generate the `people_json` chat dataset: turn a sentence about a person into one line of JSON.

The dataset was written for tinkerflow (names, cities and sentence templates below are ours) and is released
under CC0-1.0. It is deterministic: ``python examples/data/make_people_json.py`` rewrites the same files.

The skill: given a free-form sentence, answer with exactly ``{"name": ..., "age": ..., "city": ...}`` and
nothing else. SmolLM2-135M-Instruct does not do this out of the box (it chats, explains, or invents keys).
"""

from __future__ import annotations

import json
import pathlib
import random

NAMES = [
    "Maria",
    "Kenji",
    "Amara",
    "Lars",
    "Priya",
    "Tomasz",
    "Aiyana",
    "Mateo",
    "Ingrid",
    "Kwame",
    "Yusuf",
    "Elena",
    "Hiroshi",
    "Fatima",
    "Oskar",
    "Leilani",
    "Dmitri",
    "Chloe",
    "Rafael",
    "Sunita",
    "Bjorn",
    "Zainab",
    "Luca",
    "Mei",
    "Tariq",
    "Astrid",
    "Diego",
    "Noor",
    "Pavel",
    "Imani",
    "Jonas",
    "Camila",
    "Ravi",
    "Freya",
    "Omar",
    "Sakura",
    "Emeka",
    "Greta",
    "Joao",
    "Layla",
    "Anton",
    "Ximena",
    "Kofi",
    "Signe",
    "Arjun",
    "Ines",
    "Felix",
]
CITIES = [
    "Lisbon",
    "Osaka",
    "Nairobi",
    "Oslo",
    "Pune",
    "Krakow",
    "Denver",
    "Bogota",
    "Bergen",
    "Accra",
    "Izmir",
    "Seville",
    "Sapporo",
    "Rabat",
    "Malmo",
    "Honolulu",
    "Kazan",
    "Lyon",
    "Recife",
    "Chennai",
    "Tromso",
    "Kano",
    "Turin",
    "Chengdu",
    "Amman",
    "Uppsala",
    "Cusco",
    "Tunis",
    "Brno",
    "Lagos",
    "Graz",
    "Porto",
    "Mendoza",
    "Kumasi",
    "Aarhus",
    "Madurai",
    "Ghent",
    "Quito",
    "Tabriz",
    "Hobart",
    "Leipzig",
    "Cebu",
    "Fez",
    "Perth",
]
TEMPLATES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, a {age}-year-old from {city}.",
    "Living in {city}, {name} just turned {age}.",
    "My neighbour {name} moved to {city} last year; she is {age} now.",
    "{name} ({age}) works as a teacher in {city}.",
    "At {age}, {name} runs a small bakery in {city}.",
    "{city} is home to {name}, who is {age}.",
    "Our new colleague {name} is {age} and commutes from {city}.",
    "{name}, age {age}, was born and raised in {city}.",
    "I met {name} in {city}. {name} is {age}.",
    "After years abroad, {name} settled in {city} at the age of {age}.",
    "The winner, {name} from {city}, is only {age}.",
]
SYSTEM = "Extract the person's name, age and city from the user's sentence. Answer with one line of JSON only."


def make_row(rng: random.Random) -> dict[str, object]:
    name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 90)
    sentence = rng.choice(TEMPLATES).format(name=name, age=age, city=city)
    answer = json.dumps({"name": name, "age": age, "city": city})
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": sentence},
            {"role": "assistant", "content": answer},
        ]
    }


def main() -> None:
    rng = random.Random(20261124)
    train = [make_row(rng) for _ in range(400)]
    seen = {json.dumps(row) for row in train}
    test: list[dict[str, object]] = []
    while len(test) < 80:  # held-out rows never repeat a training row
        row = make_row(rng)
        if json.dumps(row) not in seen:
            seen.add(json.dumps(row))
            test.append(row)
    out = pathlib.Path(__file__).parent
    for name, chunk in (("people_json.train.jsonl", train), ("people_json.test.jsonl", test)):
        with open(out / name, "w", encoding="utf-8") as handle:
            for row in chunk:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(chunk)} rows to {out / name}")


if __name__ == "__main__":
    main()
