"""Diverse instructions for the EAGLE head's training responses (issue 17).

    python -m profiling.eagle_prompts --out samgpu/data/corpus/eagle_prompts.jsonl.gz

Why: a head trained on the model's answers to the shipped corpus alone (GSM8K, GPTeacher code and
roleplay) predicts those domains well (held-out top-1 0.78; Spec-Bench math 0.83-0.89) and the
others poorly (Spec-Bench writing 0.31-0.47, summarisation 0.33-0.38, teacher-forced, CPU fp32):
the head learns the response styles it sees. These prompts cover the task formats of chat use
(explain, how-to, compare, write a story / poem / email / dialogue, summarise, extract, answer from
a passage, translate, rewrite, arithmetic word problems) over topics from everyday to technical.
Passages: paragraphs of Python's own documentation (`pydoc_data.topics`, PSF licence), the only
sizeable English prose in the standard library. Everything is templated here with a fixed seed, so
the file is reproducible; none is a benchmark prompt (tests/test_corpus_leak.py).
Responses come from `python -m profiling.self_corpus --prompts FILE` on the GPU.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re

TOPICS = """
photosynthesis; the water cycle; black holes; plate tectonics; vaccines; the immune system; sleep;
climate change; renewable energy; electric cars; the stock market; inflation; compound interest;
budgeting; starting a small business; remote work; job interviews; public speaking; time
management; learning a new language; the Roman Empire; the French Revolution; the Silk Road;
ancient Egypt; the printing press; the industrial revolution; the moon landing; the internet;
artificial intelligence; machine learning; cybersecurity; password safety; cloud computing;
smartphones; social media; video games; chess; football; basketball; marathon training; yoga;
healthy eating; vegetarian cooking; baking bread; coffee; tea; wine tasting; gardening; houseplants;
composting; beekeeping; dogs; cats; birds; whales; coral reefs; rainforests; deserts; volcanoes;
earthquakes; hurricanes; the solar system; Mars; telescopes; microscopes; DNA; evolution; genetics;
the human heart; the brain; memory; stress; meditation; friendship; parenting; adolescence; aging;
retirement; volunteering; recycling; plastic pollution; public transport; city planning; tiny
houses; interior design; architecture; photography; painting; sculpture; jazz; classical music;
rock music; learning the guitar; film making; novels; poetry; theatre; museums; libraries;
philosophy; ethics; democracy; elections; human rights; law school; the jury system; taxes; trade;
globalisation; supply chains; shipping; aviation; trains; bicycles; camping; hiking; mountains;
oceans; rivers; islands; Japan; Brazil; Kenya; Norway; India; Canada; Australia; Mexico; Italy;
Egypt; winter holidays; birthdays; weddings; moving house; saving energy at home; first aid;
fire safety; earthquake preparedness; mathematics anxiety; probability; statistics; geometry;
algebra; calculus; prime numbers; cryptography; databases; spreadsheets; writing a resume;
negotiation; leadership; teamwork; customer service; marketing; branding; e-commerce; podcasts;
journalism; fake news; critical thinking; habits; motivation; procrastination; happiness
"""

TASKS = [
    "Explain {t} to a beginner.",
    "Explain {t} in simple terms, as if to a ten-year-old.",
    "What are the most important facts about {t}?",
    "Give me five practical tips about {t}.",
    "What are the pros and cons of {t}?",
    "Write a short story that involves {t}.",
    "Write a poem about {t}.",
    "Write a haiku about {t}.",
    "Write a persuasive paragraph arguing that everyone should learn about {t}.",
    "Write an email to a friend telling them what you learned about {t}.",
    "Write a dialogue between a teacher and a student about {t}.",
    "Outline an essay about {t}.",
    "Write a blog post introduction about {t}.",
    "List common misconceptions about {t} and correct them.",
    "Create a short quiz with answers about {t}.",
    "Describe the history of {t} in a few paragraphs.",
    "How has {t} changed in the last fifty years?",
    "What would a world without {t} look like?",
    "Compare {t} and {u}.",
    "How are {t} and {u} related?",
    "Write a tweet about {t}.",
    "Write a product description for a book about {t}.",
    "Give a step-by-step guide for someone getting started with {t}.",
    "Summarize what experts agree on about {t}.",
    "Write a speech for a school assembly about {t}.",
    "Suggest a weekend project related to {t}.",
    "What questions should I ask an expert on {t}?",
    "Write a short news report about a new discovery in {t}.",
    "Play the role of a tour guide and talk about {t}.",
    "Give me a one-sentence definition of {t}, then expand on it.",
]

PASSAGE_TASKS = [
    "Summarize the following text in two or three sentences.\n\n{p}",
    "Summarize the key points of this passage as a bulleted list.\n\n{p}",
    "Read the passage and answer: what is its main idea?\n\nPassage: {p}",
    "Using only the passage below, explain what it describes.\n\n{p}",
    "Rewrite the following text in simpler words.\n\n{p}",
    "Give this passage a short title, then explain your choice.\n\n{p}",
    "List the technical terms in this text and define each one.\n\n{p}",
    "Write three questions that this passage answers, with their answers.\n\n{p}",
]
TRANSLATE = "Translate the following sentence into {lang}: {s}"
LANGUAGES = ["French", "German", "Spanish", "Italian", "Portuguese", "Chinese", "Japanese"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lea"]
ITEMS = ["apples", "notebooks", "tickets", "marbles", "cookies", "pencils", "stamps", "plants"]


def topics() -> list[str]:
    return [t.strip() for t in TOPICS.replace("\n", " ").split(";") if t.strip()]


DOC_MODULES = (
    "argparse asyncio base64 bisect calendar collections contextlib csv dataclasses datetime "
    "decimal difflib email enum fractions functools gzip hashlib heapq html http inspect io "
    "ipaddress itertools json logging mailbox math multiprocessing os pathlib pickle random re "
    "sched secrets shutil socket sqlite3 statistics string subprocess tarfile tempfile textwrap "
    "threading time timeit tkinter typing unittest urllib uuid warnings weakref xml zipfile zlib"
).split()


def _doc_texts() -> list[str]:
    """pydoc's topic pages and the docstrings of common standard-library modules and their
    public members."""
    import importlib
    import warnings
    from pydoc_data.topics import topics as doc

    texts = list(doc.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in DOC_MODULES:
            try:
                mod = importlib.import_module(name)
            except Exception:  # a module missing on this build (tkinter)
                continue
            members = [getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")]
            texts += [getattr(m, "__doc__", None) for m in [mod, *members]]
    return [t for t in texts if isinstance(t, str)]


def passages(rng: random.Random, max_chars: int = 900) -> list[str]:
    """Prose paragraphs of Python's documentation (no code blocks, no tables), de-duplicated."""
    out, seen = [], set()
    for text in _doc_texts():
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if 200 <= len(para) <= max_chars and para[0].isupper() and ">>>" not in para:
                if sum(c.isalpha() for c in para) > 0.75 * len(para) and para not in seen:
                    seen.add(para)
                    out.append(para)
    rng.shuffle(out)
    return out


def sentences(paras: list[str]) -> list[str]:
    out = []
    for p in paras:
        out += [s for s in re.split(r"(?<=[.!?])\s+", p) if 40 <= len(s) <= 200]
    return out


def word_problem(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    n, m, price = rng.randint(3, 60), rng.randint(2, 12), rng.randint(2, 25)
    forms = [
        f"{a} has {n} {item} and buys {m} more packs of {price} each. How many {item} does {a} "
        "have now?",
        f"{a} sells {item} for ${price} each. On Monday {a} sold {n} and on Tuesday {m}. How much "
        "money did {a} make in total?".replace("{a}", a),
        f"{a} and {b} share {n * m} {item} so that {a} gets {m} times as many as {b}. How many "
        f"does each get?",
        f"A shop gives a {rng.choice([10, 15, 20, 25])}% discount on {item} that cost ${price}. "
        f"What does {a} pay for {n} of them?",
        f"{a} walks {m} km every day for {n} days. How many kilometres is that in total, and how "
        "many miles?",
    ]
    return rng.choice(forms)


def build(seed: int = 0, per_topic: int = 24) -> list[dict]:
    rng = random.Random(seed)
    ts = topics()
    records = []
    for t in ts:
        for task in rng.sample(TASKS, per_topic):
            u = rng.choice([x for x in ts if x != t])
            records.append({"source": "eagle-topics", "instruction": task.format(t=t, u=u)})
    paras = passages(rng)
    for i, p in enumerate(paras[:2000]):
        records.append(
            {"source": "eagle-passages", "instruction": PASSAGE_TASKS[i % 8].format(p=p)}
        )
    sents = sentences(paras)
    rng.shuffle(sents)
    for i, s in enumerate(sents[:1000]):
        lang = LANGUAGES[i % len(LANGUAGES)]
        records.append(
            {"source": "eagle-translate", "instruction": TRANSLATE.format(lang=lang, s=s)}
        )
    for _ in range(800):
        records.append({"source": "eagle-math", "instruction": word_problem(rng)})
    rng.shuffle(records)
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    records = build(args.seed)
    with gzip.GzipFile(args.out, "wb", mtime=0) as raw:
        for r in records:
            raw.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    sources = {}
    for r in records:
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    print(f"wrote {len(records)} prompts to {args.out}: {sources}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
