"""The demo tasks: seeded data generators and programmatic success checks.

- ``json``: extract a person as a fixed JSON object from a sentence.
- ``french``: translate a controlled English noun phrase to French (gender and number agree).
- ``spell``: spell a number out digit by digit ("407" -> "four zero seven").
- ``tools``: with tools offered (OpenAI's function tools, shown by edge-lora's generic layout,
  the one gemma-3's template gets), call the one the question asks for with its arguments taken
  from the question (``{"tool_calls": [...]}``), and once its result is back, answer with it.

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
    """A user ``prompt`` and the wanted ``answer``; a tools example also has the ``tools`` offered
    (OpenAI's form) and, for the answer after a result, the ``history`` before it."""

    prompt: str
    answer: str
    tools: tuple[dict, ...] = ()
    history: tuple[dict, ...] = ()

    @property
    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}, *self.history]

    def chat_options(self) -> dict:
        """The tool options of a chat call on this example (none for the plain tasks)."""
        return {"tools": list(self.tools)} if self.tools else {}


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


def _fn(name: str, description: str, **props: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": list(props)}}}


def _no_args(name: str, description: str) -> Callable[[random.Random], dict]:
    """A tool without arguments, its schema in one of the forms clients send (llm: no
    ``required``; pydantic: ``additionalProperties: false``)."""
    forms = [{"type": "object", "properties": {}}, {"type": "object", "properties": {}, "required": []},
             {"type": "object", "properties": {}, "additionalProperties": False}]
    return lambda r: {"type": "function", "function": {"name": name, "description": description,
                                                        "parameters": r.choice(forms)}}


_STR, _INT, _NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD"]
LANGUAGES = ["French", "German", "Spanish", "Italian", "Japanese"]
PHRASES = ["good morning", "thank you", "where is the station", "I like tea", "see you soon", "happy birthday"]
TOPICS = ["rust tutorials", "cheap flights to Rome", "vegan lasagna", "the history of jazz", "solar panels",
          "chess openings", "how to bake bread"]
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOG"]
WORDS = ["ephemeral", "serendipity", "laconic", "ubiquitous", "quixotic", "pragmatic"]
PACKAGES = ["Python", "pip", "git", "node", "numpy"]
#: the tools the adapter learns on: name -> (tool or tool maker, prompt templates, argument maker)
TOOL_CASES: dict[str, tuple[dict | Callable[[random.Random], dict], list[str], Callable[[random.Random], dict]]] = {
    "get_weather": (_fn("get_weather", "Current weather in a city", city=_STR),
                    ["What's the weather in {city}?", "Is it raining in {city} right now?", "Weather for {city}, please."],
                    lambda r: {"city": r.choice(CITIES)}),
    "get_time": (_fn("get_time", "The local time in a city", city=_STR),
                 ["What time is it in {city}?", "Tell me the current time in {city}."],
                 lambda r: {"city": r.choice(CITIES)}),
    "add": (_fn("add", "Add two integers", a=_INT, b=_INT),
            ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."],
            lambda r: {"a": r.randint(1, 999), "b": r.randint(1, 999)}),
    "multiply": (_fn("multiply", "Multiply two integers", a=_INT, b=_INT),
                 ["What is {a} times {b}?", "Multiply {a} by {b}."],
                 lambda r: {"a": r.randint(2, 99), "b": r.randint(2, 99)}),
    "convert_currency": (_fn("convert_currency", "Convert an amount of money between currencies",
                             amount=_NUM, from_currency=_STR, to_currency=_STR),
                         ["Convert {amount} {from_currency} to {to_currency}.",
                          "How much is {amount} {from_currency} in {to_currency}?"],
                         lambda r: dict(zip(("amount", "from_currency", "to_currency"),
                                            [r.randint(5, 500), *r.sample(CURRENCIES, 2)]))),
    "translate": (_fn("translate", "Translate a text into a language", text=_STR, language=_STR),
                  ["Translate '{text}' into {language}.", "How do you say '{text}' in {language}?"],
                  lambda r: {"text": r.choice(PHRASES), "language": r.choice(LANGUAGES)}),
    "search_web": (_fn("search_web", "Search the web", query=_STR),
                   ["Search the web for {query}.", "Find me pages about {query}."],
                   lambda r: {"query": r.choice(TOPICS)}),
    "get_stock_price": (_fn("get_stock_price", "The latest price of a stock", symbol=_STR),
                        ["What's the price of {symbol} stock?", "How is {symbol} trading today?"],
                        lambda r: {"symbol": r.choice(SYMBOLS)}),
    "set_timer": (_fn("set_timer", "Start a countdown timer", minutes=_INT),
                  ["Set a timer for {minutes} minutes.", "Remind me in {minutes} minutes."],
                  lambda r: {"minutes": r.randint(1, 90)}),
    "define_word": (_fn("define_word", "The dictionary definition of a word", word=_STR),
                    ["What does {word} mean?", "Define the word {word}."],
                    lambda r: {"word": r.choice(WORDS)}),
    "get_date": (_no_args("get_date", "Today's date"), ["What is today's date?", "What day is it today?"],
                 lambda r: {}),
    "package_version": (_fn("package_version", "The installed version of a program", package=_STR),
                        ["What version of {package} is installed?", "Which {package} version do I have?"],
                        lambda r: {"package": r.choice(PACKAGES)}),
    "python_version": (_no_args("python_version", "Return the installed version of Python"),
                       ["Which Python version is this?", "What Python version is running?",
                        "What version of Python is installed?"], lambda r: {}),
    "git_status": (_no_args("git_status", "Show the state of the git working tree"),
                   ["What is the git status?", "Are there uncommitted changes in the repo?"], lambda r: {}),
    "list_files": (_no_args("list_files", "List the files in the current folder"),
                   ["Which files are in this folder?", "List the files here."], lambda r: {}),
    "battery_level": (_no_args("battery_level", "Return the battery charge of this laptop"),
                      ["How much battery do I have left?", "What is my battery level?"], lambda r: {}),
}
#: questions no offered tool answers (the tools offered then are the weather's, the timer's...)
NO_TOOL = ["Hello {name}, how are you?", "Tell me a joke about a {noun}.", "Write a haiku about the {noun}.",
           "Say something nice to {name}.", "Thanks {name}, that is all.", "Describe a {noun} in one line."]
NO_TOOL_ANSWER = "None of my tools can help with that."
UNRELATED = ["get_weather", "get_time", "add", "multiply", "convert_currency", "get_stock_price", "set_timer",
             "battery_level", "git_status"]
RESULTS = ["21 degrees and sunny", "14:05", "1234", "88.50", "bonjour", "3 pages found", "412.30", "done",
           "2026-12-02", "3.12.1", "a word meaning short-lived"]


def _tool(rng: random.Random, name: str) -> dict:
    tool = TOOL_CASES[name][0]
    return tool(rng) if callable(tool) else tool


def _tools_example(rng: random.Random) -> Example:
    """A call (65%); after the call and its result, the answer that gives the result (25%); or a
    question none of the offered tools answers, answered so (10%)."""
    kind = rng.random()
    if kind < 0.1:
        offered = [_tool(rng, n) for n in rng.sample(UNRELATED, rng.randint(1, 3))]
        prompt = rng.choice(NO_TOOL).format(name=rng.choice(NAMES), noun=rng.choice(list(NOUNS)))
        return Example(prompt, NO_TOOL_ANSWER, tuple(offered))
    name = rng.choice(list(TOOL_CASES))
    _, prompts, make_args = TOOL_CASES[name]
    args = make_args(rng)
    offered = [_tool(rng, name), *(_tool(rng, n) for n in rng.sample([n for n in TOOL_CASES if n != name],
                                                                        rng.randint(0, 2)))]
    rng.shuffle(offered)
    prompt = rng.choice(prompts).format(**args)
    call = json.dumps({"tool_calls": [{"name": name, "arguments": args}]})
    if kind < 0.75:
        return Example(prompt, call, tuple(offered))
    result = rng.choice(RESULTS)
    history = ({"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]},
               {"role": "tool", "tool_call_id": "call_1", "name": name, "content": result})
    return Example(prompt, f"The result is {result}.", tuple(offered), history)


def _check_tools(ex: Example, output: str) -> bool:
    """The right call (name and argument values), after a result an answer stating it, or no
    call where no tool fits."""
    if ex.answer == NO_TOOL_ANSWER:
        return "none of my tools" in output.lower() or "no tool" in output.lower()
    if ex.history:
        return ex.history[-1]["content"] in output and not output.lstrip().startswith("{")
    try:
        got = json.loads(output.strip())["tool_calls"]
        return [(c["name"], c["arguments"]) for c in got] == [
            (c["name"], c["arguments"]) for c in json.loads(ex.answer)["tool_calls"]]
    except (ValueError, TypeError, KeyError):
        return False


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
            if _key(ex) not in exclude:
                out.setdefault(_key(ex), ex)
        return list(out.values())


TASKS = {
    "json": Task("json", _json_example, _check_json, 40, 400),
    "french": Task("french", _french_example, _check_exact, 16, 128),
    "spell": Task("spell", _spell_example, _check_exact, 24, 400),
    "tools": Task("tools", _tools_example, _check_tools, 60, 800),
}

TRAIN_SEED, EVAL_SEED = 1, 2


def split(task: Task, n_eval: int) -> tuple[list[Example], list[Example]]:
    """Training and held-out examples: no held-out prompt appears in training."""
    train = task.examples(task.n_train, TRAIN_SEED)
    held_out = task.examples(n_eval, EVAL_SEED, exclude={_key(e) for e in train})
    return train, held_out


def _key(ex: Example) -> str:
    """What makes two examples the same: the prompt (a tools example's, as a call or as the answer
    after a result: a held-out call is to a question never seen as a call in training)."""
    return ex.prompt if not ex.tools else json.dumps([ex.prompt, bool(ex.history)])
