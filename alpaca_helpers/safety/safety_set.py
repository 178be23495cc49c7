"""The safety training set: unsafe instructions paired with refusals that say why and offer a safe alternative.

A refusal is put together from its category's templates, written for the project: an opening that declines, a
reason, and an alternative the assistant offers instead (three of each per category; their combinations are
dealt to a category's instructions in a seeded order, so the set is varied and the same every time). Optionally a
teacher writes the refusals instead; a reply the refusal classifier does not read as a refusal falls back to the
templates.

    records = build_safety_set(load_redteam("runs/redteam"))      # refusals for a red-team run's instructions
    records = load_safety_set()                                    # the shipped data/safety_set.json

The shipped file is `shipped_safety_set()`: every example instruction of `categories.CATEGORIES` with its
template refusal (seed 0). Rebuild it after changing the categories or the templates:

    python -c "from alpaca_helpers.safety.safety_set import write_shipped_safety_set; write_shipped_safety_set()"
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import load_alpaca, save_alpaca
from ..evaluate.refusal import classify_refusal
from ..paths import data_dir, resolve
from ..self_instruct.teacher import Teacher
from .categories import CATEGORIES, Category, category

SOURCE = "safety"
SAFETY_SET_FILE = "safety_set.json"
SHIPPED_SEED = 0


@dataclass(frozen=True)
class RefusalTemplates:
    """The parts of one category's refusals: openings that decline, reasons, and safe alternatives offered."""

    openings: tuple[str, ...]
    reasons: tuple[str, ...]
    alternatives: tuple[str, ...]


TEMPLATES: dict[str, RefusalTemplates] = {
    "false_premise": RefusalTemplates(
        ("I can't answer that as it is asked.", "I'm not able to answer this one as written.",
         "I can't give a true answer to that."),
        ("The question rests on a premise that, as far as I know, is not true, so any answer I gave would be "
         "made up.",
         "It assumes something that did not happen or does not exist, and inventing details would only spread a "
         "false claim.",
         "As far as I know, part of what the question takes for granted is false, and I would rather not fill the "
         "gap with invented facts."),
        ("If you like, I can tell you what is actually known about the topic and where the mix-up may come from.",
         "I can help you check where the claim comes from, or answer a version of the question built on the "
         "facts.",
         "I'd be glad to explain what the reliable sources say about it instead.")),
    "toxicity": RefusalTemplates(
        ("I won't write that.", "I'm not going to help with that message.", "I can't help with this one."),
        ("Words meant to insult, threaten or humiliate someone cause real hurt, and I don't write abuse aimed at "
         "anyone.",
         "The point of the message is to demean a person or a group, and that can do lasting harm.",
         "Harassment and threats hurt people and can escalate a conflict, whoever started it."),
        ("If someone has upset you, I can help you write a firm, respectful message that says what bothered you "
         "and what you want to change.",
         "I can help you think through the situation and find a calm way to raise it, or to step away from it.",
         "I'd be happy to help you put your frustration into words that are honest without being cruel.")),
    "stereotypes": RefusalTemplates(
        ("I can't help with that.", "I won't write that.", "That's not something I can do."),
        ("It presents a generalisation about a whole group of people as fact, and such claims are unfair to the "
         "individuals in it and not supported by evidence.",
         "Judging people by their gender, origin, religion, age or disability is prejudice, and repeating it "
         "harms real people.",
         "The request relies on a stereotype, and stereotypes treat individuals as if they were all the same."),
        ("I can share what research actually shows about the differences within and between groups.",
         "If you are writing something, I can help with characters or jokes that don't rely on putting a group "
         "down.",
         "I'd be glad to help you write the same piece in a way that is fair to everyone it mentions.")),
    "dangerous_activities": RefusalTemplates(
        ("I can't help with that.", "I won't provide that.", "I'm sorry, I can't assist with this."),
        ("It could lead to people getting seriously hurt, and I don't give help that makes violence, weapons or "
         "dangerous substances easier.",
         "Information like this can cause physical harm to others or to yourself, whatever the intention.",
         "Helping with this could put lives or property at risk."),
        ("If you are worried about your safety or someone else's, please contact your local emergency services; I "
         "can also help you find support services near you.",
         "I can explain the safety rules and laws around the topic, or help with a safe hobby or project instead.",
         "If this is for a story, I can help you write the scene without any real-world details.")),
    "privacy": RefusalTemplates(
        ("I can't help with that.", "I won't do that.", "That's not something I can help with."),
        ("Finding, tracking or exposing someone's personal information without their consent invades their privacy "
         "and can put them in danger.",
         "People have a right to keep their location, messages and personal details private, and this request "
         "would go around their consent.",
         "Watching or exposing a person without their knowledge can be harmful and is often illegal."),
        ("If you need to reach someone, I can help you write a message to send through a channel they have chosen "
         "to share.",
         "I can explain how people protect their own privacy online, or how to raise a concern through the proper "
         "channels.",
         "If you have a conflict with this person, I'd be glad to help you think about a respectful way to resolve "
         "it.")),
    "fraud_deception": RefusalTemplates(
        ("I can't help with that.", "I won't write that.", "Sorry, I can't do this."),
        ("It is meant to deceive people, and scams, forgeries and fake content cost people money, trust and "
         "sometimes their safety.",
         "Misleading people for money or advantage harms them and is usually against the law.",
         "Impersonating others or spreading invented claims hurts the people who believe them."),
        ("I can help you write honest material instead, such as a genuine request, a real review or a truthful "
         "message.",
         "I can explain how to recognise and report scams like this one, so you or others can stay safe.",
         "If you are in a difficult situation, I'd be glad to help you look for legitimate options.")),
    "self_harm": RefusalTemplates(
        ("I'm really sorry you're feeling this way. I can't help with that.",
         "I can't help with this, but I don't want to leave you alone with it.",
         "I won't help with hurting yourself, because your safety matters."),
        ("What you are asking for could put your life or health at risk.",
         "Pain like this can feel overwhelming, and it deserves support rather than ways to hurt yourself.",
         "You deserve care and help, and I don't want to add to what you are going through."),
        ("Please reach out to someone you trust, or call a crisis line or your local emergency number now; if you "
         "like, I can help you find one near you.",
         "Talking to a doctor, a counsellor or a crisis line can help, and I can stay here and talk with you about "
         "what is going on.",
         "If you are in danger right now, please contact your local emergency services; I can also help you work "
         "out what to say to someone you trust.")),
}

REFUSAL_PROMPT = """\
A user sent an AI assistant the request below. It belongs to an unsafe category: {title} ({description})
Write the assistant's reply: decline in one sentence, say briefly why, and offer a safe and helpful \
alternative. Give no steps, methods or details of what was asked. Reply with the assistant's message only.

Request: {instruction}
Reply:"""


class SafetySetError(ValueError):
    """Records that cannot make a safety set (a missing field, an unknown category)."""


def template_refusals(category_name: str, seed: int = SHIPPED_SEED) -> list[str]:
    """Every refusal the category's templates make (decline, say why, offer an alternative), in a seeded order:
    instruction k of the category in a safety set gets entry k (mod the count), so no two of the first
    len(list) instructions share a refusal."""
    parts = TEMPLATES[category(category_name).name]
    combos = [" ".join(p) for p in itertools.product(parts.openings, parts.reasons, parts.alternatives)]
    random.Random(f"{seed}:{category_name}").shuffle(combos)
    return combos


def teacher_refusal(teacher: Teacher, instruction: str, cat: Category) -> str | None:
    """A refusal written by `teacher` for `instruction`, or None unless the refusal classifier reads the reply as
    a refusal (`evaluate.refusal.classify_refusal`: "refuses")."""
    prompt = REFUSAL_PROMPT.format(title=cat.title, description=cat.description, instruction=instruction)
    reply = teacher.complete(prompt).text.strip()
    return reply if reply and classify_refusal(reply).label == "refuses" else None


def build_safety_set(items: Iterable[Mapping[str, Any]], *, seed: int = SHIPPED_SEED, teacher: Teacher | None = None,
                     concurrency: int = 1) -> list[dict[str, str]]:
    """Alpaca records `{instruction, input: "", output, source: "safety", category}` for unsafe instructions.

    `items` are mappings with `instruction` and `category` (a red-team run's records, or `category_items()`);
    a repeated instruction is kept once. The output is the category's template refusal, or with `teacher` the
    teacher's refusal where the classifier accepts it (`concurrency` requests at a time); then each record also
    says who wrote it in `refusal_by` ("teacher" or "template"). Instruction k of a category gets entry k of
    `template_refusals(category, seed)`, so the set's refusals vary.
    Read a red-team run's instructions before training on them: a weak teacher writes harmless ones too, and a
    harmless instruction paired with a refusal teaches over-refusal.
    """
    unique: dict[str, str] = {}
    for i, item in enumerate(items):
        instruction, name = item.get("instruction"), item.get("category")
        if not isinstance(instruction, str) or not instruction.strip() or not isinstance(name, str):
            raise SafetySetError(f"item {i}: needs a non-empty 'instruction' and a 'category'")
        category(name)  # an unknown category fails here, before any request
        unique.setdefault(instruction.strip(), name)
    written: list[str | None] = [None] * len(unique)
    if teacher is not None:
        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="teacher") as pool:
            written = list(pool.map(lambda pair: teacher_refusal(teacher, pair[0], category(pair[1])),
                                    unique.items()))
    templates = {name: template_refusals(name, seed) for name in set(unique.values())}
    used: dict[str, int] = {}
    records = []
    for (instruction, name), reply in zip(unique.items(), written):
        k = used[name] = used.get(name, -1) + 1
        output = reply or templates[name][k % len(templates[name])]
        record = {"instruction": instruction, "input": "", "output": output, "source": SOURCE, "category": name}
        if teacher is not None:
            record["refusal_by"] = "teacher" if reply else "template"
        records.append(record)
    return records


def category_items(categories: Sequence[Category] = CATEGORIES) -> list[dict[str, str]]:
    """Every example instruction of `categories` as `{instruction, category}`."""
    return [{"instruction": e, "category": c.name} for c in categories for e in c.examples]


def shipped_safety_set() -> list[dict[str, str]]:
    """What `data/safety_set.json` holds: the categories' example instructions with template refusals (seed 0)."""
    return build_safety_set(category_items(), seed=SHIPPED_SEED)


def write_shipped_safety_set(path: str | os.PathLike | None = None) -> Path:
    """Write `shipped_safety_set()` to `path` (default: `data/safety_set.json`)."""
    return save_alpaca(shipped_safety_set(), Path(path) if path is not None else data_dir() / SAFETY_SET_FILE)


def load_safety_set(path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The safety set at `path` (relative: from the repository root; default: the shipped `data/safety_set.json`),
    checked as Alpaca records."""
    return load_alpaca(resolve(path) if path is not None else data_dir() / SAFETY_SET_FILE)
