"""Compare our IFEval scoring (`if-verifiable`'s checks) with lm-eval's `ifeval` task on the same responses.

lm-eval is not a dependency; unpack its wheel somewhere first (nothing of it is installed or imported by the
course):

    pip download lm-eval==0.4.13 --no-deps -d /tmp/lm && unzip -q /tmp/lm/lm_eval-*.whl -d /tmp/lm/site
    python scripts/compare_ifeval.py --lm-eval-site /tmp/lm/site [--responses runs/.../ifeval_responses.jsonl ...]

Responses: for every one of the 541 prompts, several real texts (AlpacaEval's GPT-4 Turbo answers, rotated) as
written and transformed (lower case, upper case, quoted, with a postscript, as JSON, first line cut), plus any
response files given. Prints how many per-instruction verdicts (strict and loose) agree, and each disagreement.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
from pathlib import Path

from alpaca_helpers.cli import ArgumentParser
from alpaca_helpers.data import load_alpaca_eval
from alpaca_helpers.evaluate.ifeval import check_response, load_ifeval, prepare_checks, read_responses

TRANSFORMS = {
    "as written": lambda t: t,
    "lower case": str.lower,
    "upper case": str.upper,
    "quoted": lambda t: f'"{t}"',
    "postscript": lambda t: t + "\n\nP.S. I hope this helps.",
    "json": lambda t: json.dumps({"answer": t}),
    "first line cut": lambda t: t.split("\n", 1)[-1],
    "short": lambda t: t[:200],
}


def load_lm_eval_ifeval(site: Path) -> types.ModuleType:
    """lm-eval's `tasks/ifeval/utils.py` from an unpacked wheel, without importing the rest of lm-eval."""
    for name in ("lm_eval", "lm_eval.tasks"):  # empty parents: lm-eval's own __init__ files import the harness
        module = types.ModuleType(name)
        module.__path__ = [str(site / name.replace(".", "/"))]
        sys.modules[name] = module
    sys.path.insert(0, str(site))
    # after the stub parents above; its instructions_util finds our punkt_tab: no download
    import lm_eval.tasks.ifeval.utils as utils  # noqa: PLC0415

    return utils


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm_eval_site", type=Path, required=True, help="folder holding an unpacked lm-eval wheel")
    parser.add_argument("--responses", type=Path, nargs="*", default=[], help="response files to compare on too")
    parser.add_argument("--texts_per_prompt", type=int, default=2, help="real texts tried on each prompt")
    args = parser.parse_args(argv)

    prepare_checks()
    logging.disable(logging.ERROR)  # both log an error for every emoji-only text the language check sees
    lm_eval = load_lm_eval_ifeval(args.lm_eval_site)
    prompts = load_ifeval()
    texts = [r["output"] for r in load_alpaca_eval()]
    cases = []
    for i, prompt in enumerate(prompts):
        for j in range(args.texts_per_prompt):
            text = texts[(i * args.texts_per_prompt + j) % len(texts)]
            cases += [(prompt, name, fn(text)) for name, fn in TRANSFORMS.items()]
    by_prompt = {p["prompt"]: p for p in prompts}
    for path in args.responses:
        cases += [(by_prompt[p], path.name, r) for p, r in read_responses(path).items() if p in by_prompt]

    agree = total = random_letter = 0
    disagreements = []
    for prompt, source, response in cases:
        ours = check_response(prompt, response)
        theirs = lm_eval.process_results(prompt, [response])
        for mode, key in (("strict", "inst_level_strict_acc"), ("loose", "inst_level_loose_acc")):
            for instruction, kwargs, a, b in zip(ours["instruction_id_list"], prompt["kwargs"], ours[mode],
                                                 theirs[key], strict=True):
                if not kwargs.get("letter", "a").isalpha():  # Google's check then tests a random letter: left out
                    random_letter += 1
                    continue
                total += 1
                agree += a == b
                if a != b:
                    disagreements.append((prompt["key"], instruction, mode, source, a, b))
    print(f"{len(cases)} responses, {total} verdicts (strict and loose): {agree} agree, {total - agree} differ "
          f"({random_letter} verdicts of a random letter left out)")
    for key, instruction, mode, source, a, b in disagreements[:40]:
        print(f"  key {key} {instruction} ({mode}, {source}): if-verifiable {a}, lm-eval {b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
