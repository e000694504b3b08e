"""Indirect object identification (Wang et al., 2022) as a contrast set, adapted to any tokenizer.

Positive: "Then, John and Mary went to the store. John gave a drink to" (answer " Mary", the
indirect object IO; the repeated subject S is " John"). Half the prompts put the names of the
first clause in BABA order (S first, as here), half in ABBA order (IO first). The final IO is
removed.

Negative: the same prompt with the first mention of S replaced by a third name C ("Then, Anna
and Mary went to the store. John gave a drink to"), so the three names are distinct and there is
no repeated subject to exclude. Only one token differs from the positive, which keeps the pair
aligned for activation patching. (The public code of the SAE-circuits paper builds the same kind
of three-name prompt by renaming; the difference is only which slot holds which name.)

Names must be single tokens with a leading space in the model's tokenizer; names that are not are
dropped, and the generator fails with a clear error if fewer than three remain. The metric is the
logit difference IO - S at the last position.
"""

from __future__ import annotations

import random
from typing import Any

from probes.sae_circuits.tasks.contrast import ContrastPrompts, encode, single_token_id
from workbench.errors import ConfigError

# [S] is the subject (repeated in positives), [IO] the indirect object; the first clause lists
# them as "[S] and [IO]" (BABA) or "[IO] and [S]" (ABBA).
TEMPLATES = [
    "Then, {first} and {second} went to the {place}. [S] gave a {object} to",
    "Then, {first} and {second} had a lot of fun at the {place}. [S] gave a {object} to",
    "Then, {first} and {second} were working at the {place}. [S] decided to give a {object} to",
    "Then, {first} and {second} were thinking about going to the {place}. [S] wanted to give a {object} to",
    "Then, {first} and {second} had a long argument, and afterwards [S] said to",
    "After {first} and {second} went to the {place}, [S] gave a {object} to",
    "When {first} and {second} got a {object} at the {place}, [S] decided to give it to",
    "While {first} and {second} were working at the {place}, [S] gave a {object} to",
    "While {first} and {second} were walking to the {place}, [S] handed a {object} to",
    "After lunch, {first} and {second} went to the {place}. [S] gave a {object} to",
    "Afterwards, {first} and {second} went to the {place}. [S] brought a {object} to",
    "Friends {first} and {second} found a {object} at the {place}. [S] gave it to",
    "Later, {first} and {second} met at the {place}, where [S] offered a {object} to",
]

NAMES = [
    "Mary", "John", "James", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Paul", "Steven", "Andrew", "Kevin", "Brian",
    "George", "Edward", "Ronald", "Timothy", "Jason", "Jeffrey", "Ryan", "Jacob", "Gary", "Eric",
    "Jonathan", "Stephen", "Larry", "Justin", "Scott", "Frank", "Benjamin", "Gregory", "Samuel", "Raymond",
    "Patrick", "Alexander", "Jack", "Dennis", "Jerry", "Tyler", "Aaron", "Henry", "Adam", "Peter",
    "Nathan", "Zach", "Kyle", "Walter", "Harold", "Carl", "Arthur", "Roger", "Joe", "Juan",
    "Lisa", "Nancy", "Karen", "Betty", "Helen", "Sandra", "Donna", "Carol", "Ruth", "Sharon",
    "Michelle", "Laura", "Sarah", "Jessica", "Emily", "Rachel", "Anna", "Rebecca", "Emma", "Grace",
    "Alice", "Julia", "Kate", "Amy", "Angela", "Linda", "Susan", "Martha", "Diana", "Victoria",
    "Rose", "Elizabeth", "Jennifer", "Maria", "Heather", "Sophia", "Olivia", "Lucy", "Claire", "Jane",
]
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park", "library", "market", "beach"]
OBJECTS = ["ring", "bone", "basketball", "computer", "necklace", "drink", "snack", "book", "letter", "flower", "hat", "key"]


def single_token_names(tokenizer: Any, names: list[str] = NAMES) -> list[tuple[str, int]]:
    """(name, token id) for every name that is one token with a leading space."""
    out = []
    for name in names:
        tid = single_token_id(tokenizer, " " + name)
        if tid is not None:
            out.append((name, tid))
    return out


def _fill(template: str, order: str, s: str, io: str, place: str, obj: str) -> str:
    first, second = (s, io) if order == "BABA" else (io, s)
    return template.format(first=first, second=second, place=place, object=obj).replace("[S]", s)


def ioi_prompts(tokenizer: Any, n: int = 250, seed: int = 0, prepend_bos: bool = True) -> ContrastPrompts:
    """`n` positive/negative pairs, half BABA and half ABBA, seeded."""
    if n < 1:
        raise ConfigError(f"n must be positive, got {n}")
    names = single_token_names(tokenizer)
    if len(names) < 3:
        raise ConfigError(
            f"IOI needs at least 3 names that are single tokens with a leading space; this tokenizer has {len(names)} "
            f"(of {len(NAMES)} candidates). Use a model with a word-level vocabulary (e.g. smollm2-135m, gpt2)."
        )
    rng = random.Random(seed)
    pos, neg, right, wrong, pos_text, neg_text = [], [], [], [], [], []
    orders = []
    attempts = 0
    while len(pos) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ConfigError("could not build aligned IOI pairs with this tokenizer (names merge with neighbouring text)")
        order = "BABA" if len(pos) % 2 == 0 else "ABBA"
        template = rng.choice(TEMPLATES)
        (s, s_id), (io, io_id), (c, _) = rng.sample(names, 3)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        p = _fill(template, order, s, io, place, obj)
        # the negative: the first-clause mention of S becomes the third name C
        first, second = (c, io) if order == "BABA" else (io, c)
        q = template.format(first=first, second=second, place=place, object=obj).replace("[S]", s)
        p_ids, q_ids = encode(tokenizer, p, prepend_bos), encode(tokenizer, q, prepend_bos)
        if len(p_ids) != len(q_ids):
            continue
        pos.append(p_ids)
        neg.append(q_ids)
        right.append([io_id])
        wrong.append([s_id])
        pos_text.append(p)
        neg_text.append(q)
        orders.append(order)
    # shuffle the pairs together so any prefix is balanced in expectation
    idx = list(range(n))
    rng.shuffle(idx)
    pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
    return ContrastPrompts(
        "ioi", pick(pos), pick(neg), pick(right), pick(wrong), pick(pos_text), pick(neg_text),
        meta={"seed": seed, "order": pick(orders), "n_names": len(names), "metric": "logit(IO) - logit(S)"},
    )
