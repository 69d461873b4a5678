"""Write the DPO example's preference data: examples/data/prefs.train.jsonl and prefs.test.jsonl.

Templated questions with short factual answers (capitals, sums, colours, animal sounds, opposites). In every
comparison the *chosen* answer states the fact in a consistent pirate voice ("Arr, the capital o' Peru be Lima,
matey!") and the *rejected* one states the same fact plainly ("The capital of Peru is Lima."). An instruct model
prefers the plain answer (it gives it the higher per-token logprob), so DPO has a preference to teach, and the
held-out split (other countries, numbers, objects, animals and words) shows whether the style generalizes.

Rows use two layouts of tinkerflow.preference.data: most are ``prompt/chosen/rejected``; some are
``prompt/completion_a/completion_b/label`` with a random order and label ``"a"`` or ``"b"``; a few training rows are
ties (two plain paraphrases, label ``"tie"``), which the example's config drops (``ties: "drop"``).

Deterministic (seeded); all names, facts and templates are ours. Released under CC0-1.0 (see LICENSE.md).

    python examples/data/make_preferences.py
"""

from __future__ import annotations

import json
import pathlib
import random

SYSTEM = "Answer briefly."

CAPITALS = [
    ("France", "Paris"),
    ("Spain", "Madrid"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Peru", "Lima"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"),
    ("Chile", "Santiago"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Greece", "Athens"),
    ("Poland", "Warsaw"),
    ("Cuba", "Havana"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Finland", "Helsinki"),
    ("Hungary", "Budapest"),
    ("Thailand", "Bangkok"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"),
    ("Colombia", "Bogota"),
    ("Turkey", "Ankara"),
    ("Iran", "Tehran"),
    ("Ghana", "Accra"),
    ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"),
    ("Vietnam", "Hanoi"),
    ("Nepal", "Kathmandu"),
    ("Iceland", "Reykjavik"),
    ("Morocco", "Rabat"),
    ("Ukraine", "Kyiv"),
    ("Romania", "Bucharest"),
    ("Scotland", "Edinburgh"),
    ("Wales", "Cardiff"),
]
COLOURS = [
    ("the sky", "blue"),
    ("grass", "green"),
    ("a banana", "yellow"),
    ("snow", "white"),
    ("coal", "black"),
    ("a tomato", "red"),
    ("a carrot", "orange"),
    ("a lemon", "yellow"),
    ("a lime", "green"),
    ("milk", "white"),
    ("a strawberry", "red"),
    ("an eggplant", "purple"),
    ("the sea", "blue"),
    ("chocolate", "brown"),
    ("a flamingo", "pink"),
    ("a crow", "black"),
    ("a pumpkin", "orange"),
    ("a cucumber", "green"),
    ("a polar bear", "white"),
    ("a ruby", "red"),
    ("an emerald", "green"),
    ("a sapphire", "blue"),
    ("ash", "grey"),
    ("a plum", "purple"),
]
SOUNDS = [
    ("dog", "woof"),
    ("cat", "meow"),
    ("cow", "moo"),
    ("duck", "quack"),
    ("sheep", "baa"),
    ("lion", "roar"),
    ("owl", "hoot"),
    ("horse", "neigh"),
    ("pig", "oink"),
    ("frog", "croak"),
    ("bee", "buzz"),
    ("snake", "hiss"),
    ("donkey", "hee-haw"),
    ("rooster", "cock-a-doodle-doo"),
    ("mouse", "squeak"),
    ("wolf", "howl"),
    ("goat", "bleat"),
    ("crow", "caw"),
    ("turkey", "gobble"),
    ("dove", "coo"),
]
OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("up", "down"),
    ("day", "night"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("wet", "dry"),
    ("old", "new"),
    ("hard", "soft"),
    ("loud", "quiet"),
    ("high", "low"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("thick", "thin"),
    ("inside", "outside"),
    ("win", "lose"),
    ("push", "pull"),
    ("begin", "end"),
    ("buy", "sell"),
    ("north", "south"),
]

OPENERS = ("Arr", "Yo ho", "Ahoy")
CLOSERS = ("matey", "me hearty")


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _pirate(fact: str, rng: random.Random) -> str:
    return f"{rng.choice(OPENERS)}, {fact}, {rng.choice(CLOSERS)}!"


def _facts(rng: random.Random) -> dict[str, list[tuple[str, str, str, str]]]:
    """Per category: (question, plain answer, pirate fact, plain paraphrase for ties)."""
    capitals = [
        (
            f"What is the capital of {country}?",
            f"The capital of {country} is {city}.",
            f"the capital o' {country} be {city}",
            f"It is {city}.",
        )
        for country, city in CAPITALS
    ]
    colours = [
        (
            f"What colour is {thing}?",
            f"{thing[0].upper() + thing[1:]} is {colour}.",
            f"{thing} be {colour}",
            f"It is {colour}.",
        )
        for thing, colour in COLOURS
    ]
    sounds = [
        (
            f"What sound does {_a(animal)} make?",
            f"{_a(animal).capitalize()} says {sound}.",
            f"{_a(animal)} says {sound}",
            f"It says {sound}.",
        )
        for animal, sound in SOUNDS
    ]
    opposites = [
        (
            f"What is the opposite of {word}?",
            f"The opposite of {word} is {other}.",
            f"the opposite o' {word} be {other}",
            f"It is {other}.",
        )
        for word, other in OPPOSITES
    ]
    pairs = rng.sample([(a, b) for a in range(2, 40) for b in range(2, 40) if a != b], 160)
    sums = [
        (f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} be {a + b}", f"It is {a + b}.")
        for a, b in pairs
    ]
    return {"capitals": capitals, "colours": colours, "sounds": sounds, "opposites": opposites, "sums": sums}


def _prompt(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def _row(question: str, plain: str, pirate: str, rng: random.Random) -> dict[str, object]:
    if rng.random() < 0.75:
        return {"prompt": _prompt(question), "chosen": pirate, "rejected": plain}
    if rng.random() < 0.5:
        return {"prompt": _prompt(question), "completion_a": pirate, "completion_b": plain, "label": "a"}
    return {"prompt": _prompt(question), "completion_a": plain, "completion_b": pirate, "label": "b"}


def build(seed: int = 0) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """(train rows, test rows): held-out rows use entities the training rows never mention."""
    rng = random.Random(seed)
    train: list[dict[str, object]] = []
    test: list[dict[str, object]] = []
    test_share = {"capitals": 8, "colours": 5, "sounds": 4, "opposites": 5, "sums": 10}
    for category, facts in _facts(rng).items():
        facts = list(facts)
        rng.shuffle(facts)
        held = test_share[category]
        for question, plain, fact, _ in facts[:held]:
            test.append({"prompt": _prompt(question), "chosen": _pirate(fact, rng), "rejected": plain})
        for question, plain, fact, paraphrase in facts[held:]:
            train.append(_row(question, plain, _pirate(fact, rng), rng))
            if rng.random() < 0.04:
                tie = {"prompt": _prompt(question), "completion_a": plain, "completion_b": paraphrase, "label": "tie"}
                train.append(tie)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def main() -> None:
    here = pathlib.Path(__file__).parent
    train, test = build()
    for name, rows in (("prefs.train.jsonl", train), ("prefs.test.jsonl", test)):
        with open(here / name, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{here / name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
