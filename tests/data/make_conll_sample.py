"""Writes tests/data/conll2003/{train,dev}.txt: hand-made sentences in CoNLL-2003's four-column format (word POS chunk
NER, IOB2 over PER, ORG, LOC, MISC), from the templates and names below, seeded. The real CoNLL-2003 files are not
redistributable; these stand in for them in unit tests. Run `python tests/data/make_conll_sample.py` to regenerate."""

import random
from pathlib import Path

PER = ["Peter Blackburn", "Anna Schmidt", "John Smith", "Maria Lopez", "Li Wei", "Ahmed Hassan", "Olga Petrova",
       "Tom", "Sarah Jane Miller", "Kenji Sato", "Pierre Dubois", "Nadia"]  # fmt: skip
ORG = ["European Commission", "Reuters", "United Nations", "Bayern Munich", "Toyota", "World Bank",
       "Real Madrid", "Greenpeace", "Bank of England", "NATO"]  # fmt: skip
LOC = ["Germany", "Berlin", "New York", "Brazil", "Tokyo", "South Africa", "Lake Geneva", "Paris", "Cairo", "Canada"]
MISC = ["German", "British", "Olympic", "World Cup", "French", "Nobel Prize", "Japanese", "Euro 2000"]

TEMPLATES = [
    "{PER} visited {LOC} on Monday .",
    "{ORG} said on Tuesday that {PER} would lead the talks in {LOC} .",
    "The {MISC} team beat {ORG} 2-1 in {LOC} .",
    "{PER} , a spokesman for {ORG} , declined to comment .",
    "Shares of {ORG} rose 3 percent in {LOC} trading .",
    "{PER} won the {MISC} after a long fight with {PER} .",
    "Officials in {LOC} and {LOC} met the {MISC} delegation .",
    "{ORG} signed {PER} from {ORG} for an undisclosed fee .",
    "It was raining in {LOC} .",
    "The company said profits fell sharply in the third quarter .",
    "{PER} told reporters that the {MISC} government had not been informed of the plan before the vote .",
    "{ORG} and {ORG} agreed to merge , creating the largest group of its kind in {LOC} and beyond .",
]
POS = {".": ".", ",": ",", "the": "DT", "The": "DT", "a": "DT", "an": "DT", "in": "IN", "on": "IN", "of": "IN",
       "for": "IN", "from": "IN", "with": "IN", "that": "IN", "after": "IN", "and": "CC"}  # fmt: skip


def sentence(rng: random.Random) -> list[tuple[str, str, str, str]]:
    rows = []
    for piece in rng.choice(TEMPLATES).split():
        kind = piece[1:-1] if piece.startswith("{") else None
        if kind is None:
            tag = POS.get(piece, "CD" if piece[0].isdigit() else "NN")
            rows.append((piece, tag, "O" if tag in ".," else "I-NP", "O"))
            continue
        for i, word in enumerate(rng.choice(globals()[kind]).split()):
            rows.append((word, "NNP", "I-NP" if i else "B-NP", f"{'I' if i else 'B'}-{kind}"))
    return rows


def write(path: Path, count: int, rng: random.Random, avoid: set) -> set:
    seen, lines = set(avoid), ["-DOCSTART- -X- -X- O", ""]
    made = set()
    while len(made) < count:
        rows = sentence(rng)
        key = tuple(r[0] for r in rows)
        if key in seen:
            continue
        seen.add(key)
        made.add(key)
        lines += [" ".join(r) for r in rows] + [""]
        if len(made) % 40 == 0:
            lines += ["-DOCSTART- -X- -X- O", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return made


if __name__ == "__main__":
    out = Path(__file__).parent / "conll2003"
    out.mkdir(exist_ok=True)
    rng = random.Random(2003)
    train = write(out / "train.txt", 300, rng, set())
    write(out / "dev.txt", 80, rng, train)
