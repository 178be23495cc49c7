"""Learning from feedback, measured: base/SFT against best-of-n against DPO, paired by seed (`compare`).

    python -m alpaca_helpers.feedback --preset cpu_course --output_dir runs/feedback              # 2 CPU cores
    python -m alpaca_helpers.feedback --preset cpu_course --seeds 0 1 2 --train_prompts 48       # the docs' table
    python -m alpaca_helpers.feedback --preset alpaca_7b --model_name_or_path runs/04_7b/model --gpus 8

A run killed at any point goes on where it stopped when started again with the same output folder. Prints the
per-arm table (mean ± SE over seeds, the paired change from sft and its 95% interval) and the judge's agreement
with the verifier.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from ..cli import ArgumentParser
from ..data import DataSourceError
from ..precision import PrecisionError
from ..self_instruct.teacher import TeacherError
from ..train.config import TrainConfigError
from ..train.launch import LaunchError
from ..understand.stats import summary_markdown
from .compare import ARMS, run_feedback
from .settings import SETTING_NAMES, FeedbackError, load_settings

USER_ERRORS = (FeedbackError, TrainConfigError, DataSourceError, LaunchError, TeacherError, PrecisionError,
               FileNotFoundError)


def _setting(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep:
        raise FeedbackError(f"--train {text!r}: expected name=value, e.g. learning_rate=1e-6")
    return name.strip(), yaml.safe_load(value)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m alpaca_helpers.feedback", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu_course", help="a preset of configs/feedback/ or a YAML path")
    parser.add_argument("--output_dir", default="runs/feedback", help="every seed's files and results.jsonl")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the preset's)")
    for name in ("model_name_or_path", "data_path", "judge_base_url", "judge_model", "judge_api", "judge_method"):
        parser.add_argument(f"--{name}", help=f"{name} (default: the preset's)")
    for name in ("train_prompts", "held_out_prompts", "samples", "max_new_tokens", "ifeval_items", "teacher_items",
                 "gpus", "cpu_processes"):
        parser.add_argument(f"--{name}", type=int, help=f"{name} (default: the preset's)")
    parser.add_argument("--train", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the DPO run, e.g. learning_rate=1e-6 (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="show the DPO run's step bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    preset, output_dir, verbose = args.pop("preset"), args.pop("output_dir"), args.pop("verbose")
    try:
        train = dict(map(_setting, args.pop("train")))
        settings = load_settings(preset, **{k: v for k, v in args.items() if k in SETTING_NAMES}, train=train or None)
        result = run_feedback(settings, output_dir, verbose=verbose)
    except USER_ERRORS as e:  # one line for what a user can fix; anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(summary_markdown(result.table, list(ARMS), list(dict.fromkeys(t["metric"] for t in result.table))))
    agreement = result.agreement()
    rate = "no decisive verdict" if agreement["rate"] is None else f"{agreement['rate']:.2f} ± {agreement['se']:.2f}"
    print(f"judge agrees with the verifier: {rate} (n = {agreement['n']} of {agreement['pairs']} pairs)")
    print(f"results in {output_dir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
