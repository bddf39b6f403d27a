"""Validation pairs for pair models (NLI, paraphrase, cross-encoder rerankers).

Built in: premise/hypothesis pairs that entail, contradict or are unrelated,
query/passage pairs for rerankers, pairs where one side or both are far beyond
the max length (so longest-first truncation is exercised), and odd inputs. A
user's file holds one pair per line, the two texts separated by one tab.
"""

from __future__ import annotations

from pathlib import Path

from export.errors import BadValidationFile
from export.texts import IN_DOMAIN, LONG, ODD, OUT_OF_DOMAIN, read_lines

Pair = tuple[str, str]

NLI = [
    ("A man is playing a guitar on stage.", "A person is performing music."),
    ("A man is playing a guitar on stage.", "Nobody is playing an instrument."),
    ("A man is playing a guitar on stage.", "The man is a famous chef."),
    ("The cat sat on the mat.", "A cat is sitting."),
    ("The cat sat on the mat.", "The mat is empty."),
    ("Two children are running in a park.", "Kids are outside."),
    ("Two children are running in a park.", "The children are asleep in bed."),
    ("The restaurant was closed on Monday.", "You could not eat there on Monday."),
    ("The restaurant was closed on Monday.", "The restaurant serves Italian food."),
    ("She bought three apples and two pears.", "She bought fruit."),
    ("She bought three apples and two pears.", "She bought no fruit at all."),
    ("The flight to Boston was delayed by two hours.", "The flight left on time."),
    ("The flight to Boston was delayed by two hours.", "The plane was late."),
    ("I lost my credit card yesterday.", "This text is about banking."),
    ("I lost my credit card yesterday.", "This text is about sports."),
    ("What is the weather like in Paris?", "This example is a question about the weather."),
    ("Transfer $200 from checking to savings.", "The speaker wants to move money."),
    ("Transfer $200 from checking to savings.", "The speaker wants to book a flight."),
    ("how do i reset my password", "how can i change my password"),
    ("how do i reset my password", "what is the capital of france"),
]

QUERIES = [
    ("what is the capital of france", "Paris is the capital and most populous city of France."),
    ("what is the capital of france", "Berlin is the capital of Germany."),
    ("how long should i cook chicken breast", "Bake chicken breasts at 200 °C for 20 to 25 minutes."),
    ("how long should i cook chicken breast", "The stock market closed higher on Friday."),
    ("symptoms of the flu", "Fever, cough, sore throat and muscle aches are common flu symptoms."),
    ("symptoms of the flu", "Cats spend a large part of the day sleeping."),
]


def builtin_pairs() -> list[Pair]:
    """About 150 pairs: curated ones, neighbouring requests, queries against prose,
    long sides and odd inputs on either side."""
    in_domain = [t for t in IN_DOMAIN if t]
    prose = [t for t in OUT_OF_DOMAIN if t]
    pairs = list(NLI) + list(QUERIES)
    pairs += [(in_domain[i], in_domain[i + 1]) for i in range(0, min(len(in_domain) - 1, 80), 2)]
    pairs += [(in_domain[i], prose[i % len(prose)]) for i in range(0, min(len(in_domain), 60), 3)]
    pairs += [(long, "a short hypothesis") for long in LONG]
    pairs += [("a short premise", long) for long in LONG]
    pairs += [(LONG[i], LONG[-1 - i]) for i in range(len(LONG))]
    pairs += [(odd, "hello world") for odd in ODD] + [("hello world", odd) for odd in ODD[:8]]
    return pairs


def read_pair_file(path: str | Path) -> list[Pair]:
    """One pair per line as ``first<TAB>second``; blank lines are skipped."""
    pairs = []
    for number, line in read_lines(path, "one pair per line, the two texts separated by a tab"):
        parts = line.rstrip("\r").split("\t")
        if len(parts) != 2:
            raise BadValidationFile(
                f"validation file {path}, line {number}: expected two texts separated by one tab, "
                f"found {len(parts) - 1} tabs"
            )
        pairs.append((parts[0], parts[1]))
    return pairs
