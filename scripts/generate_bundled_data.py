"""Generate the data sets bundled with pytest-quant (calibration chats, lm-eval tasks, fidelity prompts).

Everything is written by this script from the word lists below with a fixed seed, so the output is
reproducible: ``python scripts/generate_bundled_data.py`` rewrites ``pytest_quant/data/``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "pytest_quant" / "data"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "United Kingdom": "London", "Ireland": "Dublin", "Netherlands": "Amsterdam", "Belgium": "Brussels",
    "Austria": "Vienna", "Switzerland": "Bern", "Poland": "Warsaw", "Czech Republic": "Prague",
    "Hungary": "Budapest", "Greece": "Athens", "Sweden": "Stockholm", "Norway": "Oslo", "Denmark": "Copenhagen",
    "Finland": "Helsinki", "Iceland": "Reykjavik", "Russia": "Moscow", "Ukraine": "Kyiv", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Turkey": "Ankara", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Nigeria": "Abuja", "Ghana": "Accra", "Ethiopia": "Addis Ababa", "Morocco": "Rabat",
    "South Africa": "Pretoria", "Senegal": "Dakar", "Japan": "Tokyo", "China": "Beijing",
    "South Korea": "Seoul", "India": "New Delhi", "Pakistan": "Islamabad", "Bangladesh": "Dhaka",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta", "Philippines": "Manila",
    "Malaysia": "Kuala Lumpur", "Iran": "Tehran", "Iraq": "Baghdad", "Saudi Arabia": "Riyadh",
    "Israel": "Jerusalem", "Jordan": "Amman", "Lebanon": "Beirut", "Syria": "Damascus", "Afghanistan": "Kabul",
    "Nepal": "Kathmandu", "Sri Lanka": "Colombo", "Mongolia": "Ulaanbaatar", "Australia": "Canberra",
    "New Zealand": "Wellington", "Canada": "Ottawa", "United States": "Washington", "Mexico": "Mexico City",
    "Cuba": "Havana", "Jamaica": "Kingston", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Chile": "Santiago", "Peru": "Lima", "Colombia": "Bogota", "Venezuela": "Caracas", "Ecuador": "Quito",
    "Uruguay": "Montevideo", "Paraguay": "Asuncion", "Bolivia": "La Paz", "Estonia": "Tallinn",
    "Latvia": "Riga", "Lithuania": "Vilnius", "Slovakia": "Bratislava", "Slovenia": "Ljubljana",
    "Albania": "Tirana", "Cyprus": "Nicosia", "Tunisia": "Tunis", "Algeria": "Algiers", "Libya": "Tripoli",
    "Sudan": "Khartoum", "Uganda": "Kampala", "Tanzania": "Dodoma", "Zimbabwe": "Harare", "Zambia": "Lusaka",
    "Angola": "Luanda", "Qatar": "Doha", "Kuwait": "Kuwait City", "Oman": "Muscat", "Yemen": "Sanaa",
    "Cambodia": "Phnom Penh", "Laos": "Vientiane", "Myanmar": "Naypyidaw", "Singapore": "Singapore",
}
ELEMENTS = {
    "hydrogen": "H", "helium": "He", "lithium": "Li", "carbon": "C", "nitrogen": "N", "oxygen": "O",
    "fluorine": "F", "neon": "Ne", "sodium": "Na", "magnesium": "Mg", "aluminium": "Al", "silicon": "Si",
    "phosphorus": "P", "sulfur": "S", "chlorine": "Cl", "argon": "Ar", "potassium": "K", "calcium": "Ca",
    "iron": "Fe", "copper": "Cu", "zinc": "Zn", "silver": "Ag", "gold": "Au", "mercury": "Hg", "lead": "Pb",
    "tin": "Sn", "uranium": "U", "nickel": "Ni", "iodine": "I", "platinum": "Pt",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "up": "down",
    "open": "closed", "early": "late", "full": "empty", "strong": "weak", "rich": "poor", "young": "old",
    "high": "low", "wet": "dry", "hard": "soft", "loud": "quiet", "long": "short", "thick": "thin",
    "heavy": "light", "clean": "dirty", "true": "false", "win": "lose", "buy": "sell", "push": "pull",
    "begin": "end", "give": "take", "inside": "outside", "above": "below", "before": "after",
    "day": "night", "friend": "enemy", "love": "hate", "question": "answer", "north": "south",
    "east": "west", "left": "right", "first": "last", "near": "far", "cheap": "expensive", "safe": "dangerous",
}
ANIMAL_SOUNDS = {
    "dog": "bark", "cat": "meow", "cow": "moo", "sheep": "baa", "duck": "quack", "lion": "roar",
    "horse": "neigh", "pig": "oink", "owl": "hoot", "snake": "hiss", "bee": "buzz", "frog": "croak",
    "mouse": "squeak", "wolf": "howl", "donkey": "bray", "rooster": "crow",
}
ANIMAL_YOUNG = {
    "dog": "puppy", "cat": "kitten", "cow": "calf", "sheep": "lamb", "horse": "foal", "goat": "kid",
    "frog": "tadpole", "bear": "cub", "duck": "duckling", "goose": "gosling", "swan": "cygnet",
    "kangaroo": "joey", "deer": "fawn", "pig": "piglet", "owl": "owlet", "butterfly": "caterpillar",
}
COLORS = {
    "the sky on a clear day": "blue", "fresh grass": "green", "a ripe banana": "yellow", "snow": "white",
    "coal": "black", "a ripe tomato": "red", "an orange": "orange", "chocolate": "brown",
    "a lemon": "yellow", "milk": "white", "blood": "red", "a lime": "green", "a crow": "black",
    "an eggplant": "purple", "a flamingo": "pink", "the sea on a sunny day": "blue",
}
TOOLS = {
    "a carpenter": "a hammer", "a painter": "a brush", "a doctor": "a stethoscope", "a writer": "a pen",
    "a chef": "a knife", "a farmer": "a tractor", "a photographer": "a camera", "a gardener": "a rake",
    "a barber": "scissors", "a surgeon": "a scalpel", "an astronomer": "a telescope",
    "a fisherman": "a net", "a tailor": "a needle", "a plumber": "a wrench", "a miner": "a pickaxe",
    "a musician": "an instrument",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]

TOPICS = {
    "cooking": ["bread", "soup", "pasta", "a curry", "pancakes", "a salad", "rice", "roast vegetables"],
    "travel": ["a train trip", "a week in the mountains", "a city break", "a camping trip", "a long flight",
               "a road trip", "a beach holiday", "a cycling tour"],
    "programming": ["a Python script", "a web server", "a unit test", "a database query", "a sorting function",
                    "a command-line tool", "a REST API", "a shell script"],
    "science": ["photosynthesis", "gravity", "the water cycle", "electricity", "volcanoes", "magnetism",
                "the solar system", "cell division"],
    "history": ["the Roman Empire", "the printing press", "the industrial revolution", "ancient Egypt",
                "the first flight", "the Silk Road", "medieval castles", "the steam engine"],
    "health": ["sleep", "running", "drinking water", "stretching", "a balanced diet", "stress",
               "walking every day", "posture at a desk"],
    "finance": ["a monthly budget", "saving for a trip", "compound interest", "an emergency fund",
                "paying off debt", "a small business", "comparing prices", "a savings account"],
    "gardening": ["tomatoes", "herbs on a balcony", "roses", "compost", "watering plants", "a vegetable bed",
                  "seedlings", "fruit trees"],
    "music": ["learning the guitar", "reading sheet music", "a choir", "playing the piano", "rhythm",
              "writing a song", "a drum kit", "tuning an instrument"],
    "sports": ["football", "swimming", "tennis", "a marathon", "basketball", "climbing", "chess", "yoga"],
}
ASKS = [
    "Can you explain {x} in simple terms?", "What should a beginner know about {x}?",
    "I want to get better at {x}. Where do I start?", "Give me three tips about {x}.",
    "What are common mistakes with {x}?", "Write a short paragraph about {x}.",
    "Why do people care about {x}?", "How long does it take to learn about {x}?",
    "Summarize the key facts about {x}.", "Compare two ways of approaching {x}.",
]
OPENERS = [
    "Sure. {X} is a good place to start.", "Good question.", "Here is a short overview.",
    "Happy to help with that.", "Let me break it down.", "There are a few things to keep in mind.",
]
BODY = [
    "Start small and build a routine around {x}, because steady practice beats occasional effort.",
    "Most people find that {x} becomes easier once the basic steps are clear.",
    "A common mistake is to rush; with {x}, patience usually pays off.",
    "Keep notes on what worked and what did not, so the next attempt at {x} is better.",
    "It helps to set a clear goal, such as finishing one part of {x} each week.",
    "Ask someone with experience to look at your progress with {x} and give feedback.",
    "Good tools matter less than good habits when it comes to {x}.",
    "Break {x} into smaller pieces and check each piece before moving on.",
    "Reading one reliable guide about {x} is better than skimming ten poor ones.",
    "Measure the result, compare it with your goal, and adjust how you approach {x}.",
    "The basics of {x} have not changed much in many years, so older advice is often still useful.",
    "If something about {x} goes wrong, go back to the last step that worked and try again slowly.",
    "Many beginners underestimate how much rest and reflection help with {x}.",
    "Sharing what you learn about {x} with a friend is a good way to remember it.",
]
FOLLOWUPS = ["Thanks! Can you give an example?", "That helps. What should I avoid?",
             "How do I know I am making progress?", "Could you make that shorter?"]


def _mc(rng: random.Random, question: str, answer: str, pool: list[str]) -> dict:
    distractors = rng.sample(sorted(set(pool) - {answer}), 3)
    choices = distractors + [answer]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "answer": choices.index(answer)}


def facts(rng: random.Random) -> list[dict]:
    """Four-way multiple-choice general-knowledge questions."""
    items = []
    caps = list(CAPITALS.values())
    items += [_mc(rng, f"What is the capital of {c}?", a, caps) for c, a in CAPITALS.items()]
    items += [_mc(rng, f"Which city is the capital city of {c}?", a, caps) for c, a in CAPITALS.items()]
    items += [_mc(rng, f"What is the chemical symbol for {e}?", s, list(ELEMENTS.values()))
              for e, s in ELEMENTS.items()]
    items += [_mc(rng, f"What is the opposite of '{w}'?", o, list(OPPOSITES.values())) for w, o in OPPOSITES.items()]
    items += [_mc(rng, f"What sound does a {a} make?", s, list(ANIMAL_SOUNDS.values()))
              for a, s in ANIMAL_SOUNDS.items()]
    items += [_mc(rng, f"What is a young {a} called?", y, list(ANIMAL_YOUNG.values())) for a, y in ANIMAL_YOUNG.items()]
    items += [_mc(rng, f"What color is {t}?", c, sorted(set(COLORS.values()))) for t, c in COLORS.items()]
    items += [_mc(rng, f"Which tool is most used by {p}?", t, list(TOOLS.values())) for p, t in TOOLS.items()]
    items += [_mc(rng, f"Which day comes after {d}?", DAYS[(i + 1) % 7], DAYS) for i, d in enumerate(DAYS)]
    items += [_mc(rng, f"Which month comes after {m}?", MONTHS[(i + 1) % 12], MONTHS) for i, m in enumerate(MONTHS)]
    for _ in range(60):
        a, b = rng.randint(2, 50), rng.randint(2, 50)
        items.append(_mc(rng, f"What is {a} plus {b}?", str(a + b), [str(a + b + d) for d in (-10, -2, -1, 1, 2, 10)] + [str(a + b)]))
    rng.shuffle(items)
    return items


NAMES = ["Sam", "Ana", "Liam", "Mia", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Ines", "Tom", "Yuki"]
THINGS = ["apples", "marbles", "books", "stickers", "pencils", "cookies", "coins", "stamps", "shells", "cards"]


def word_problem(rng: random.Random) -> dict:
    """A grade-school arithmetic word problem with a worked answer ending in '#### N'."""
    n, t = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.randrange(4)
    a, b = rng.randint(5, 60), rng.randint(2, 30)
    if kind == 0:
        q = f"{n} has {a} {t}. {n} buys {b} more {t}. How many {t} does {n} have now?"
        r, work = a + b, f"{n} has {a} + {b} = {a + b} {t}."
    elif kind == 1:
        a = a + b
        q = f"{n} has {a} {t} and gives {b} of them to a friend. How many {t} does {n} have left?"
        r, work = a - b, f"{n} has {a} - {b} = {a - b} {t} left."
    elif kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q = f"{n} has {a} boxes with {b} {t} in each box. How many {t} does {n} have in total?"
        r, work = a * b, f"{n} has {a} * {b} = {a * b} {t}."
    else:
        per, k = rng.randint(2, 9), rng.randint(2, 9)
        a, c = per * k, rng.randint(1, 9)
        q = (f"{n} shares {a} {t} equally among {k} friends, and then each friend finds {c} more. "
             f"How many {t} does each friend have?")
        r = per + c
        work = f"Each friend first gets {a} / {k} = {per} {t}, then has {per} + {c} = {r} {t}."
    return {"question": q, "answer": f"{work}\n#### {r}"}


def chat(rng: random.Random) -> dict:
    """One synthetic user/assistant conversation of one to three turns and varied length."""
    topic = rng.choice(sorted(TOPICS))
    x = rng.choice(TOPICS[topic])
    messages = []
    for turn in range(rng.choice([1, 1, 2, 3])):
        ask = rng.choice(ASKS).format(x=x) if turn == 0 else rng.choice(FOLLOWUPS)
        body = [rng.choice(OPENERS).format(X=x[0].upper() + x[1:])]
        body += [s.format(x=x) for s in rng.sample(BODY, rng.randint(1, 8))]
        messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": " ".join(body)}]
    return {"topic": topic, "messages": messages}


def article(rng: random.Random, i: int) -> dict:
    """A few plain-English paragraphs for perplexity and fidelity measurements."""
    topic = rng.choice(sorted(TOPICS))
    subjects = rng.sample(TOPICS[topic], 3)
    paras = []
    for x in subjects:
        sents = [s.format(x=x) for s in rng.sample(BODY, rng.randint(3, 6))]
        paras.append(f"{x[0].upper() + x[1:]} is a topic in {topic}. " + " ".join(sents))
    country, capital = rng.choice(sorted(CAPITALS.items()))
    paras.append(f"In a survey held in {capital}, the capital of {country}, people were asked about {topic}. "
                 f"Most said that {subjects[0]} mattered more to them than {subjects[1]}.")
    return {"title": f"Notes on {topic} ({i})", "text": "\n\n".join(paras)}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(20261123)
    write_jsonl(OUT / "calibration" / "chats.jsonl", [chat(rng) for _ in range(640)])
    mc = facts(rng)
    write_jsonl(OUT / "tasks" / "quant_facts_dev.jsonl", mc[:20])
    write_jsonl(OUT / "tasks" / "quant_facts_test.jsonl", mc[20:])
    write_jsonl(OUT / "tasks" / "quant_arith_train.jsonl", [word_problem(rng) for _ in range(20)])
    write_jsonl(OUT / "tasks" / "quant_arith_test.jsonl", [word_problem(rng) for _ in range(300)])
    texts = [article(rng, i) for i in range(200)]
    write_jsonl(OUT / "tasks" / "quant_text_test.jsonl", texts)
    write_jsonl(OUT / "prompts.jsonl", [{"text": t["text"]} for t in texts[:64]])
    print(f"facts={len(mc)} chats=640 arith=320 texts={len(texts)} -> {OUT}")


if __name__ == "__main__":
    main()
