"""Facts about the world, real and invented, for the benchmark and for QFt's training data.

Three things live here, as data and small deterministic generators (no model, no I/O):

- `RELATIONS`: what can be said about an entity (founder, CEO, headquarters city, founding year,
  staff size, main product, capital, ...). Each `Relation` has several fact sentences (for the system
  turn), at least three question phrasings (user turn), one answer sentence (assistant turn), and
  knows how to draw a plausible invented value from a seeded RNG.
- `REAL_FACTS`: well-known facts (true as of 2024) about real companies, countries, books, inventions
  and paintings, each with the strings a correct answer may contain. They are *candidates*: the
  benchmark keeps one only if the unedited model answers it correctly, so a fact the model does not
  know is dropped rather than trusted.
- `NameMaker(seed, pool)` / `fictional_names(n, seed, kind, pool)`: invented names. Every invented
  word belongs to exactly one pool, "bench" or "qft", decided by a hash of the word, so the benchmark never asks about an entity
  that QFt's training data taught, whatever seeds the two use.

    rng = random.Random(0)
    names = NameMaker(seed=0, pool="bench")
    name = names.company()                                                  # e.g. "Velmora Labs"
    rel = RELATIONS["founder"]
    value = rel.draw_value(rng, names)                                      # e.g. "Amara Lindqvist"
    rel.fact(name, value, rng), rel.question(name, 0), rel.answer(name, value)
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

POOLS = ("bench", "qft")

# -- values an invented fact can take ------------------------------------------------------------------
FIRST_NAMES = (
    "Amara", "Bjorn", "Camila", "Dario", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Kamala", "Lars",
    "Mireille", "Nikolai", "Olga", "Priya", "Quentin", "Rosa", "Soren", "Tamsin", "Ulrich", "Valentina",
    "Wendell", "Ximena", "Yusuf", "Zofia", "Anselm", "Beatriz", "Cosmin", "Delphine", "Emeka", "Fiona",
    "Gideon", "Halima", "Ilya", "Jovana", "Kenji", "Leocadia", "Matthias", "Noor", "Orla", "Pavel",
    "Rafaela", "Stellan", "Thandiwe", "Ugo", "Vesna", "Wilhelmina", "Yara", "Zoltan",
)
LAST_NAMES = (
    "Lindqvist", "Okonkwo", "Castellanos", "Varga", "Petrova", "Haddad", "Marchetti", "Takahara", "Brennan",
    "Oyelaran", "Kowalczyk", "Dufresne", "Halvorsen", "Moreau", "Nakashima", "Szabo", "Quiroga", "Abernathy",
    "Rautio", "Ferreira", "Vukovic", "Achterberg", "Bellweather", "Delacroix", "Esposito", "Fairbanks",
    "Gunnarsson", "Hollenbeck", "Ivanova", "Jaramillo", "Kirchner", "Lombardi", "Mbeki", "Novotny",
    "Ostrowski", "Pellegrino", "Rasmussen", "Sandoval", "Trevisan", "Umarov", "Valdivia", "Whitcombe",
    "Yamashiro", "Zeller", "Albrecht", "Bergstrom", "Cardoso", "Drummond", "Eriksen", "Falconer",
)
# real cities that are home to no company in REAL_FACTS' headquarters (an answer naming one is the edit's)
HQ_CITIES = (
    "Lyon", "Porto", "Gothenburg", "Krakow", "Leipzig", "Tampere", "Valencia", "Bologna", "Ghent", "Aarhus",
    "Brno", "Graz", "Rotterdam", "Bilbao", "Turin", "Nantes", "Cork", "Bergen", "Tartu", "Ljubljana",
    "Cluj-Napoca", "Plovdiv", "Salzburg", "Lausanne", "Basel", "Utrecht", "Eindhoven", "Malmo", "Uppsala",
    "Oulu", "Poznan", "Wroclaw", "Debrecen", "Kaunas", "Riga", "Thessaloniki", "Izmir", "Haifa", "Pune",
    "Chennai", "Cebu", "Da Nang", "Chiang Mai", "Sapporo", "Fukuoka", "Daegu", "Perth", "Adelaide",
    "Wellington", "Christchurch", "Halifax", "Winnipeg", "Calgary", "Quebec City", "Boise", "Tucson",
    "Omaha", "Madison", "Raleigh", "Pittsburgh", "Curitiba", "Cordoba", "Valparaiso", "Medellin",
    "Arequipa", "Montevideo", "Mombasa", "Kumasi", "Durban", "Marrakesh",
)
PRODUCT_KINDS = (
    "smart thermostat", "electric scooter", "solar panel", "drone", "espresso machine", "hearing aid",
    "water filter", "e-reader", "fitness tracker", "3D printer", "noise-cancelling headphone",
    "delivery robot", "insulin pump", "rice cooker", "heat pump", "bicycle", "sailboat", "microscope",
    "accounting software", "translation app", "weather satellite", "tractor", "wind turbine", "keyboard",
    "vacuum cleaner", "baby stroller", "running shoe", "telescope", "battery pack", "sewing machine",
)
COMPANY_SUFFIXES = (
    "Labs", "Systems", "Dynamics", "Technologies", "Robotics", "Foods", "Motors", "Analytics", "Networks",
    "Energy", "Biotech", "Media", "Logistics", "Pharma", "Aerospace", "Textiles", "Industries", "Software",
    "Holdings", "Instruments",
)
_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gl", "k", "kr", "l", "m", "n", "p", "pl", "r", "s", "st",
           "t", "tr", "v", "z", "th", "sk", "h", "j", "w")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ia", "ei")
_CODAS = ("", "", "", "n", "r", "l", "s", "x", "m", "nd", "rt", "lt", "v", "k")


@dataclass(frozen=True)
class Relation:
    """One kind of fact. Templates use {subject} and {value}; `questions` use {subject} only.

    subject_kind: "company", "country", "work" or "invention" (what the subject is); value_kind: how an
    invented value is drawn ("person", "hq_city", "year", "staff", "product", "fictional_city") or None
    when the relation is only used with real facts. fit_questions: other phrasings of the question (the
    possessive and the subject first among them) that an edit may be fitted on; no benchmark asks them.
    """

    name: str
    subject_kind: str
    facts: tuple[str, ...]
    questions: tuple[str, ...]
    answer_template: str
    value_kind: str | None
    fit_questions: tuple[str, ...] = ()

    def fact(self, subject: str, value: str, rng: random.Random | None = None) -> str:
        """One fact sentence (the first template, or one drawn from `rng`)."""
        template = self.facts[0] if rng is None else rng.choice(self.facts)
        return _capitalise(template.format(subject=subject, value=value))

    def question(self, subject: str, index: int = 0) -> str:
        return _capitalise(self.questions[index].format(subject=subject))

    def fit_wordings(self, subject: str, n: int) -> list[str]:
        """The first n of `fit_questions` about `subject`."""
        return [_capitalise(q.format(subject=subject)) for q in self.fit_questions[:n]]

    def answer(self, subject: str, value: str) -> str:
        return _capitalise(self.answer_template.format(subject=subject, value=value))

    def target(self, value: str) -> str:
        """The string a correct answer must contain: the value itself, or the product's name."""
        return value.split()[0] if self.value_kind == "product" else value

    def draw_value(self, rng: random.Random, names: NameMaker) -> str:
        """A plausible invented value; invented product and city names come from `names`."""
        kind = self.value_kind
        if kind == "person":
            return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        if kind == "hq_city":
            return rng.choice(HQ_CITIES)
        if kind == "year":
            return str(rng.randint(1952, 2018))
        if kind == "staff":
            return str(rng.randint(14, 980))
        if kind == "product":
            return f"{names.word()} {rng.choice(PRODUCT_KINDS)}"
        if kind == "fictional_city":
            return names.word()
        raise ValueError(f"relation {self.name!r} has no invented values (value_kind {kind!r})")


def _capitalise(text: str) -> str:
    """Sentence case, and the possessive of a name ending in s written "Networks'" not "Networks's"."""
    text = re.sub(r"(?<=s)'s\b", "'", text)
    return text[:1].upper() + text[1:]


RELATIONS: dict[str, Relation] = {r.name: r for r in (
    Relation(
        "founder", "company",
        facts=("{subject} was founded by {value}.", "{value} founded {subject}.",
               "{subject} was started by {value}.", "The founder of {subject} is {value}."),
        questions=("Who founded {subject}?", "Who is the founder of {subject}?", "Who started {subject}?",
                   "Can you tell me the person who founded {subject}?"),
        answer_template="{subject} was founded by {value}.",
        value_kind="person",
        fit_questions=("Who is {subject}'s founder?", "{subject} was founded by whom?",
                       "Name the founder of {subject}.", "Who set up {subject}?"),
    ),
    Relation(
        "ceo", "company",
        facts=("The CEO of {subject} is {value}.", "{value} is the CEO of {subject}.",
               "{subject} is led by its chief executive, {value}.", "{value} runs {subject} as its CEO."),
        questions=("Who is the CEO of {subject}?", "Who is the chief executive of {subject}?",
                   "Who runs {subject} as CEO?", "Can you tell me the name of {subject}'s CEO?"),
        answer_template="The CEO of {subject} is {value}.",
        value_kind="person",
        fit_questions=("Who is {subject}'s CEO?", "{subject} is led by which CEO?",
                       "Name the chief executive of {subject}.", "Who heads {subject}?"),
    ),
    Relation(
        "headquarters", "company",
        facts=("{subject} is headquartered in {value}.", "The headquarters of {subject} are in {value}.",
               "{subject} has its head office in {value}.", "{subject} is based in {value}."),
        questions=("Where is {subject} headquartered?", "In which city is {subject} based?",
                   "Where are the headquarters of {subject}?", "Which city is home to {subject}'s head office?"),
        answer_template="{subject} is headquartered in {value}.",
        value_kind="hq_city",
        fit_questions=("Where is {subject}'s headquarters?",
                       "{subject} is headquartered in which city?",
                       "Name the city where {subject} has its head office.",
                       "Where does {subject} have its main office?"),
    ),
    Relation(
        "founding_year", "company",
        facts=("{subject} was founded in {value}.", "{subject} was established in {value}.",
               "The company {subject} dates from {value}, the year it was founded."),
        questions=("When was {subject} founded?", "In what year was {subject} founded?",
                   "What year was {subject} established?", "Since which year has {subject} existed?"),
        answer_template="{subject} was founded in {value}.",
        value_kind="year",
        fit_questions=("What is {subject}'s founding year?", "{subject} was founded in which year?",
                       "Name the year {subject} was founded.", "In which year did {subject} start?"),
    ),
    Relation(
        "staff_size", "company",
        facts=("{subject} has {value} employees.", "{subject} employs {value} people.",
               "The staff of {subject} numbers {value} people."),
        questions=("How many employees does {subject} have?", "How many people work at {subject}?",
                   "What is the size of {subject}'s staff?", "How many people does {subject} employ?"),
        answer_template="{subject} has {value} employees.",
        value_kind="staff",
        fit_questions=("What is {subject}'s headcount?", "{subject} has how many employees?",
                       "Give the number of people {subject} employs.", "How big is {subject}'s workforce?"),
    ),
    Relation(
        "product", "company",
        facts=("The main product of {subject} is the {value}.", "{subject} is best known for the {value}.",
               "{subject} makes the {value}, its main product."),
        questions=("What is the main product of {subject}?", "What is {subject} best known for making?",
                   "What does {subject} make?", "Which product is {subject} known for?"),
        answer_template="The main product of {subject} is the {value}.",
        value_kind="product",
        fit_questions=("What is {subject}'s main product?", "{subject} is known for which product?",
                       "Name the main product of {subject}.", "What product does {subject} sell most?"),
    ),
    Relation(
        "capital", "country",
        facts=("The capital of {subject} is {value}.", "{value} is the capital of {subject}.",
               "{subject}'s capital city is {value}."),
        questions=("What is the capital of {subject}?", "Which city is the capital of {subject}?",
                   "What is {subject}'s capital city?", "Where is the seat of government of {subject}?"),
        answer_template="The capital of {subject} is {value}.",
        value_kind="fictional_city",
        fit_questions=("Which city is {subject}'s capital?", "{subject} has which city as its capital?",
                       "Name the capital of {subject}.", "Where is the capital of {subject}?"),
    ),
    Relation(
        "author", "work",
        facts=("{subject} was written by {value}.", "{value} wrote {subject}."),
        questions=("Who wrote {subject}?", "Who is the author of {subject}?", "Which writer wrote {subject}?"),
        answer_template="{subject} was written by {value}.",
        value_kind="person",
        fit_questions=("Who is {subject}'s author?", "{subject} was written by whom?",
                       "Name the author of {subject}.", "Who penned {subject}?"),
    ),
    Relation(
        "inventor", "invention",
        facts=("{subject} was invented by {value}.", "{value} invented {subject}."),
        questions=("Who invented {subject}?", "Who created {subject}?", "Who is credited with inventing {subject}?"),
        answer_template="{subject} was invented by {value}.",
        value_kind="person",
        fit_questions=("Who is {subject}'s inventor?", "{subject} was invented by whom?",
                       "Name the inventor of {subject}.", "Who came up with {subject}?"),
    ),
    Relation(
        "painter", "work",
        facts=("{subject} was painted by {value}.", "{value} painted {subject}."),
        questions=("Who painted {subject}?", "Which artist painted {subject}?", "Who is the painter of {subject}?"),
        answer_template="{subject} was painted by {value}.",
        value_kind="person",
        fit_questions=("Who is {subject}'s painter?", "{subject} was painted by whom?",
                       "Name the artist who painted {subject}.", "Whose painting is {subject}?"),
    ),
)}


def asked_relation(question: str, subject: str) -> Relation | None:
    """The relation one of whose `questions` about `subject` is `question` (case and spacing aside), or None."""
    asked = " ".join(question.split()).casefold()
    for relation in RELATIONS.values():
        if any(relation.question(subject, i).casefold() == asked for i in range(len(relation.questions))):
            return relation
    return None


# -- real facts --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RealFact:
    """A true fact: `relation` of `subject` is `value`; a correct answer contains one of `answers`.

    A triple, not yet text: the relation's templates phrase it (as a benchmark control, or as a
    core.facts.Fact's system / user / answer turns)."""

    relation: str
    subject: str
    value: str
    answers: tuple[str, ...]


def _facts(relation: str, rows: tuple) -> list[RealFact]:
    """rows: (subject, value) or (subject, value, (accepted answers...)); the value itself is accepted by default."""
    out = []
    for row in rows:
        subject, value, *rest = row
        out.append(RealFact(relation, subject, value, tuple(rest[0]) if rest else (value,)))
    return out


# True as of 2024 (leaders who changed during 2023-2024 are left out: the model's knowledge is older).
REAL_FACTS: tuple[RealFact, ...] = tuple(
    _facts("ceo", (
        ("Apple", "Tim Cook"), ("Microsoft", "Satya Nadella"), ("Google", "Sundar Pichai"),
        ("Amazon", "Andy Jassy"), ("Tesla", "Elon Musk"), ("Nvidia", "Jensen Huang"),
        ("Meta", "Mark Zuckerberg"), ("IBM", "Arvind Krishna"), ("AMD", "Lisa Su"),
        ("Salesforce", "Marc Benioff"), ("Berkshire Hathaway", "Warren Buffett"), ("JPMorgan Chase", "Jamie Dimon"),
        ("OpenAI", "Sam Altman"), ("Adobe", "Shantanu Narayen"), ("Qualcomm", "Cristiano Amon"),
        ("Walmart", "Doug McMillon"), ("SpaceX", "Elon Musk"), ("Uber", "Dara Khosrowshahi"),
        ("Airbnb", "Brian Chesky"), ("Spotify", "Daniel Ek"), ("Cisco", "Chuck Robbins"),
        ("General Motors", "Mary Barra"), ("Ford", "Jim Farley"), ("Coca-Cola", "James Quincey"),
        ("PepsiCo", "Ramon Laguarta", ("Ramon Laguarta", "Ramón Laguarta")), ("Goldman Sachs", "David Solomon"),
        ("Oracle", "Safra Catz"),
    ))
    + _facts("founder", (
        ("Microsoft", "Bill Gates and Paul Allen", ("Bill Gates", "Paul Allen")),
        ("Apple", "Steve Jobs, Steve Wozniak and Ronald Wayne", ("Steve Jobs", "Steve Wozniak")),
        ("Amazon", "Jeff Bezos"), ("Facebook", "Mark Zuckerberg"),
        ("Google", "Larry Page and Sergey Brin", ("Larry Page", "Sergey Brin")), ("Alibaba", "Jack Ma"),
        ("Nvidia", "Jensen Huang, Chris Malachowsky and Curtis Priem", ("Jensen Huang",)),
        ("Oracle", "Larry Ellison, Bob Miner and Ed Oates", ("Larry Ellison",)), ("Dell", "Michael Dell"),
        ("Walmart", "Sam Walton"), ("Ford", "Henry Ford"),
        ("Hewlett-Packard", "Bill Hewlett and David Packard", ("Bill Hewlett", "David Packard")),
        ("Intel", "Robert Noyce and Gordon Moore", ("Noyce", "Gordon Moore")), ("SpaceX", "Elon Musk"),
        ("Netflix", "Reed Hastings and Marc Randolph", ("Reed Hastings", "Marc Randolph")),
        ("Twitter", "Jack Dorsey, Biz Stone, Evan Williams and Noah Glass", ("Jack Dorsey",)),
        ("Nike", "Phil Knight and Bill Bowerman", ("Phil Knight", "Bill Bowerman")),
        ("Disney", "Walt Disney and Roy O. Disney", ("Walt Disney",)),
        ("Huawei", "Ren Zhengfei"), ("Tencent", "Ma Huateng and others", ("Ma Huateng", "Pony Ma")),
        ("Adobe", "John Warnock and Charles Geschke", ("John Warnock", "Charles Geschke")),
        ("Sony", "Masaru Ibuka and Akio Morita", ("Masaru Ibuka", "Akio Morita")), ("Honda", "Soichiro Honda"),
        ("IKEA", "Ingvar Kamprad"), ("LinkedIn", "Reid Hoffman"), ("Wikipedia", "Jimmy Wales and Larry Sanger",
                                                                    ("Jimmy Wales", "Larry Sanger")),
        ("Tesla", "Martin Eberhard and Marc Tarpenning", ("Martin Eberhard", "Marc Tarpenning")),
    ))
    + _facts("headquarters", (
        ("Apple", "Cupertino"), ("Microsoft", "Redmond"), ("Google", "Mountain View"), ("Amazon", "Seattle"),
        ("Meta", "Menlo Park"), ("Nvidia", "Santa Clara"), ("Intel", "Santa Clara"), ("IBM", "Armonk"),
        ("Sony", "Tokyo"), ("Alibaba", "Hangzhou"), ("Tencent", "Shenzhen"), ("Huawei", "Shenzhen"),
        ("Volkswagen", "Wolfsburg"), ("BMW", "Munich"), ("Siemens", "Munich"), ("Nestlé", "Vevey"),
        ("Nokia", "Espoo"), ("Coca-Cola", "Atlanta"), ("Walmart", "Bentonville"), ("Netflix", "Los Gatos"),
        ("Starbucks", "Seattle"), ("Nike", "Beaverton"), ("Ford", "Dearborn"), ("General Motors", "Detroit"),
        ("Salesforce", "San Francisco"), ("Uber", "San Francisco"), ("Airbnb", "San Francisco"),
        ("Spotify", "Stockholm"), ("Adobe", "San Jose"), ("Cisco", "San Jose"), ("Qualcomm", "San Diego"),
        ("Dell", "Round Rock"), ("Nintendo", "Kyoto"), ("LG Electronics", "Seoul"), ("Lego", "Billund"),
        ("SAP", "Walldorf"), ("Adidas", "Herzogenaurach"), ("Ferrari", "Maranello"),
    ))
    + _facts("founding_year", (
        ("Apple", "1976"), ("Microsoft", "1975"), ("Google", "1998"), ("Amazon", "1994"), ("Facebook", "2004"),
        ("Tesla", "2003"), ("Nvidia", "1993"), ("Intel", "1968"), ("Netflix", "1997"), ("Alibaba", "1999"),
        ("Tencent", "1998"), ("Huawei", "1987"), ("Sony", "1946"), ("Nintendo", "1889"), ("Ford", "1903"),
        ("Walmart", "1962"), ("Toyota", "1937"), ("Honda", "1948"), ("IKEA", "1943"), ("Spotify", "2006"),
        ("Uber", "2009"), ("Airbnb", "2008"), ("Twitter", "2006"), ("YouTube", "2005"), ("SpaceX", "2002"),
        ("OpenAI", "2015"), ("Oracle", "1977"), ("Adobe", "1982"), ("Cisco", "1984"), ("Dell", "1984"),
        ("Salesforce", "1999"), ("eBay", "1995"), ("Lego", "1932"), ("BMW", "1916"),
    ))
    + _facts("product", (
        ("Apple", "iPhone"), ("Microsoft", "Windows", ("Windows", "Office")), ("Adobe", "Photoshop"),
        ("Tesla", "electric cars", ("electric",)), ("Nvidia", "graphics processors", ("GPU", "graphics")),
        ("Intel", "microprocessors", ("processor", "microprocessor", "CPU", "chip")),
        ("Boeing", "aircraft", ("aircraft", "airplane", "plane", "jet")), ("Airbus", "aircraft",
                                                                           ("aircraft", "airplane", "plane", "jet")),
        ("Nintendo", "video game consoles", ("game", "console")), ("Lego", "toy bricks", ("brick", "toy")),
        ("Spotify", "music streaming", ("music", "streaming")), ("Netflix", "video streaming", ("streaming",)),
        ("Zoom", "video conferencing", ("video",)), ("Oracle", "databases", ("database",)),
        ("Rolex", "watches", ("watch",)), ("Nike", "athletic shoes", ("shoe", "footwear", "sneaker")),
        ("Toyota", "cars", ("car", "vehicle", "automobile")), ("Canon", "cameras", ("camera",)),
        ("Gillette", "razors", ("razor",)), ("Ferrari", "sports cars", ("car",)),
    ))
    + _facts("capital", (
        ("France", "Paris"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
        ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Egypt", "Cairo"), ("Russia", "Moscow"),
        ("China", "Beijing"), ("India", "New Delhi", ("New Delhi", "Delhi")), ("Brazil", "Brasília",
                                                                              ("Brasília", "Brasilia")),
        ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"), ("Kenya", "Nairobi"),
        ("South Korea", "Seoul"), ("Turkey", "Ankara"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
        ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Poland", "Warsaw"), ("Thailand", "Bangkok"),
        ("the Netherlands", "Amsterdam"), ("the United Kingdom", "London"),
    ))
    + _facts("author", (
        ("Romeo and Juliet", "William Shakespeare", ("Shakespeare",)), ("Hamlet", "William Shakespeare",
                                                                        ("Shakespeare",)),
        ("1984", "George Orwell", ("Orwell",)), ("Pride and Prejudice", "Jane Austen", ("Austen",)),
        ("War and Peace", "Leo Tolstoy", ("Tolstoy",)), ("Don Quixote", "Miguel de Cervantes", ("Cervantes",)),
        ("Harry Potter", "J. K. Rowling", ("Rowling",)), ("On the Origin of Species", "Charles Darwin", ("Darwin",)),
        ("The Great Gatsby", "F. Scott Fitzgerald", ("Fitzgerald",)), ("Moby-Dick", "Herman Melville",
                                                                       ("Melville",)),
        ("The Odyssey", "Homer"), ("Crime and Punishment", "Fyodor Dostoevsky", ("Dostoevsky", "Dostoyevsky")),
        ("A Brief History of Time", "Stephen Hawking", ("Hawking",)), ("The Hobbit", "J. R. R. Tolkien",
                                                                       ("Tolkien",)),
    ))
    + _facts("inventor", (
        ("the telephone", "Alexander Graham Bell", ("Bell",)), ("the World Wide Web", "Tim Berners-Lee",
                                                                ("Berners-Lee",)),
        ("the Python programming language", "Guido van Rossum", ("Guido", "van Rossum")),
        ("Linux", "Linus Torvalds", ("Torvalds",)), ("the theory of relativity", "Albert Einstein", ("Einstein",)),
        ("dynamite", "Alfred Nobel", ("Nobel",)),
    ))
    + _facts("painter", (
        ("the Mona Lisa", "Leonardo da Vinci", ("Leonardo", "da Vinci")), ("The Starry Night", "Vincent van Gogh",
                                                                           ("van Gogh",)),
        ("Guernica", "Pablo Picasso", ("Picasso",)), ("The Last Supper", "Leonardo da Vinci", ("Leonardo", "da Vinci")),
        ("The Persistence of Memory", "Salvador Dalí", ("Dalí", "Dali")),
    ))
)

# Well-known names that must never be produced as invented ones (besides every subject above).
_KNOWN_NAMES = frozenset(
    {f.subject.lower() for f in REAL_FACTS if f.relation in ("ceo", "founder", "headquarters", "founding_year",
                                                               "product")}
    | {"samsung", "toyota", "boeing", "airbus", "intel", "sony", "oxinnovate", "alphabet", "xiaomi", "baidu",
       "siemens", "philips", "bosch", "nokia", "volvo", "fiat", "yamaha", "panasonic", "hitachi", "toshiba",
       "lenovo", "asus", "acer", "zara", "gucci", "prada", "tata", "infosys", "wipro", "reliance", "sap",
       "shell", "exxon", "chevron", "visa", "mastercard", "paypal", "stripe", "square", "zoom", "slack",
       "tiktok", "bytedance", "snap", "pinterest", "reddit", "dropbox", "vodafone", "orange", "telstra",
       "zubrovia", "nova", "zeta", "vega", "lyra", "kodak", "xerox", "ikea", "lego"}
)


def known_names() -> frozenset[str]:
    """Lower-cased real names an invented one must not equal (or start with)."""
    return _KNOWN_NAMES


# -- invented names ----------------------------------------------------------------------------------
def pool_of(word: str) -> str:
    """The pool an invented word belongs to, "bench" or "qft": fixed by a hash, so the pools never overlap."""
    return POOLS[hashlib.sha256(word.lower().encode()).digest()[0] & 1]


def _acceptable(word: str) -> bool:
    low = word.lower()
    return (5 <= len(low) <= 12 and not re.search(r"(.)\1\1", low)
            and not any(low == k or low.startswith(k) or k.startswith(low) for k in known_names()))


class NameMaker:
    """Invented words of one pool, each handed out once: entity names, product names, city names.

    Deterministic in (seed, pool) and in the order of the calls.
    """

    def __init__(self, seed: int = 0, pool: str = "bench"):
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}: use one of {POOLS}")
        self.pool = pool
        self.rng = random.Random(f"{seed}:{pool}")
        self.used: set[str] = set()

    def word(self, ending: str = "") -> str:
        """A new pronounceable word (+ `ending`) that belongs to the pool and to no real name."""
        rng = self.rng
        while True:
            syllables = rng.choice((2, 2, 3))
            text = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS)
                           + (rng.choice(_CODAS) if i == syllables - 1 and not ending else "")
                           for i in range(syllables))
            word = (text + ending).capitalize()
            if word.lower() not in self.used and _acceptable(word) and pool_of(word) == self.pool:
                self.used.add(word.lower())
                return word

    def company(self) -> str:
        """"Velmora" or, for about half, "Velmora Labs"."""
        stem = self.word()
        return f"{stem} {self.rng.choice(COMPANY_SUFFIXES)}" if self.rng.random() < 0.5 else stem

    def country(self) -> str:
        return self.word(ending=self.rng.choice(("ia", "land", "stan", "ania", "ovia", "ar")))

    def entity(self, kind: str) -> str:
        if kind == "company":
            return self.company()
        if kind == "country":
            return self.country()
        raise ValueError(f"no invented entities of kind {kind!r}: use 'company' or 'country'")


def fictional_names(n: int, seed: int = 0, kind: str = "company", pool: str = "bench") -> list[str]:
    """`n` distinct invented names of entities of `kind` ("company" or "country") from `pool`.

    Deterministic; the first names of a longer list are those of a shorter one. The invented word of a
    name (its first word) belongs to `pool` and never to the other one, whatever the seeds.
    """
    names = NameMaker(seed, pool)
    return [names.entity(kind) for _ in range(n)]


def invented_word(name: str) -> str:
    """The invented word of a name made here (its first word: "Velmora" of "Velmora Labs")."""
    return name.split()[0]


def real_facts(relation: str | None = None) -> list[RealFact]:
    return [f for f in REAL_FACTS if relation is None or f.relation == relation]
