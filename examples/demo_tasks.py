"""The three demo tasks: seeded data generators and programmatic success checks.

- ``json``: extract a person as a fixed JSON object from a sentence.
- ``french``: translate a controlled English noun phrase to French (gender and number agree).
- ``spell``: spell a number out digit by digit ("407" -> "four zero seven").

gemma-3-270m (a base model, no instruction tuning) cannot do any of them alone.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

NAMES = ["Alice", "Bruno", "Chen", "Dara", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kemal", "Lena",
         "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sami", "Tomas", "Uma", "Viktor", "Wen", "Yara"]
CITIES = ["Paris", "Lisbon", "Oslo", "Cairo", "Lima", "Seoul", "Dublin", "Prague", "Nairobi", "Quito", "Hanoi",
          "Vienna", "Austin", "Perth", "Tunis", "Riga"]
SENTENCES = [
    "{name} is {age} years old and lives in {city}.",
    "Meet {name}, a {age}-year-old from {city}.",
    "{name} ({age}) moved to {city} last year.",
    "At {age}, {name} still calls {city} home.",
    "Our new colleague {name} is {age} and based in {city}.",
]

NOUNS = {  # english: (french, gender)
    "cat": ("chat", "m"), "dog": ("chien", "m"), "house": ("maison", "f"), "car": ("voiture", "f"),
    "book": ("livre", "m"), "table": ("table", "f"), "tree": ("arbre", "m"), "flower": ("fleur", "f"),
    "bird": ("oiseau", "m"), "apple": ("pomme", "f"), "door": ("porte", "f"), "hat": ("chapeau", "m"),
}
ADJECTIVES = {  # english: (masculine, feminine)
    "red": ("rouge", "rouge"), "small": ("petit", "petite"), "big": ("grand", "grande"), "black": ("noir", "noire"),
    "white": ("blanc", "blanche"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"), "new": ("neuf", "neuve"),
}
PLURAL_NOUN = {"oiseau": "oiseaux", "chapeau": "chapeaux"}
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def _json_example(rng: random.Random) -> Example:
    name, city, age = rng.choice(NAMES), rng.choice(CITIES), rng.randint(18, 89)
    sentence = rng.choice(SENTENCES).format(name=name, age=age, city=city)
    answer = json.dumps({"name": name, "age": age, "city": city})
    return Example(f"Extract the person as JSON: {sentence}", answer)


def _french_example(rng: random.Random) -> Example:
    noun, adj, plural = rng.choice(list(NOUNS)), rng.choice(list(ADJECTIVES)), rng.random() < 0.5
    fr, gender = NOUNS[noun]
    fr_adj = ADJECTIVES[adj][0 if gender == "m" else 1]
    if plural:
        fr = PLURAL_NOUN.get(fr, fr + "s")
        fr_adj = fr_adj if fr_adj.endswith("s") else fr_adj + "s"
        article, en = "les", f"the {adj} {noun}s"
    else:
        article, en = ("le" if gender == "m" else "la"), f"the {adj} {noun}"
    return Example(f"Translate to French: {en}", f"{article} {fr} {fr_adj}")


def _spell_example(rng: random.Random) -> Example:
    number = str(rng.randint(0, 10 ** rng.randint(2, 6) - 1))
    return Example(f"Spell out the digits: {number}", " ".join(DIGITS[int(d)] for d in number))


def _check_json(ex: Example, output: str) -> bool:
    try:
        return json.loads(output.strip()) == json.loads(ex.answer)
    except (ValueError, TypeError):
        return False


def _check_exact(ex: Example, output: str) -> bool:
    return output.strip().lower().rstrip(".") == ex.answer


@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[[random.Random], Example]
    check: Callable[[Example, str], bool]
    max_tokens: int
    n_train: int  # distinct training examples (french has only 192 phrases in all)

    def examples(self, n: int, seed: int, exclude: set[str] = frozenset()) -> list[Example]:
        """``n`` distinct examples, none of whose prompts is in ``exclude``."""
        rng = random.Random(f"{self.name}-{seed}")
        out: dict[str, Example] = {}
        while len(out) < n:
            ex = self.make(rng)
            if ex.prompt not in exclude:
                out.setdefault(ex.prompt, ex)
        return list(out.values())


TASKS = {
    "json": Task("json", _json_example, _check_json, 40, 400),
    "french": Task("french", _french_example, _check_exact, 16, 128),
    "spell": Task("spell", _spell_example, _check_exact, 24, 400),
}

TRAIN_SEED, EVAL_SEED = 1, 2


def split(task: Task, n_eval: int) -> tuple[list[Example], list[Example]]:
    """Training and held-out examples: no held-out prompt appears in training."""
    train = task.examples(task.n_train, TRAIN_SEED)
    held_out = task.examples(n_eval, EVAL_SEED, exclude={e.prompt for e in train})
    return train, held_out
