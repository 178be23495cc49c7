"""Learning from feedback, measured (notebook 09, `python -m alpaca_helpers.feedback`): base/SFT against best-of-n
against DPO, paired by seed.

Per seed, in this order, each step's output kept in `<output_dir>/seed<s>/` so that a run killed at any point goes
on where it stopped when started again with the same output folder:
1. constrained prompts from the settings' instructions (`constraints.prompt_sets`: IFEval look-alikes removed,
   training and held-out prompts of different instructions);
2. `samples` answers of the starting model to each training prompt (`samples.jsonl`), pairs chosen by the verifier
   (`pairs.pairs`), the judge asked about the same pairs in both orders (`judged.jsonl`: how often does a simulated
   annotator agree with the verifier?), and the pairs' reference log-probabilities under the starting model
   (`pairs.jsonl`, what DPO trains on);
3. the arms measured on the same held-out sets: `sft` (the starting model, greedy), `best_of_n` (the starting model,
   `samples` answers, the verifier's best kept) and `dpo` (the training recipe with `loss dpo` from the starting
   model, greedy; in this process, or its own `accelerate launch`). Each arm × seed appends one row to
   `results.jsonl` (fsync'd).

Metrics: the held-out constrained prompts' prompt-level and instruction-level pass rates (strict, the verifier's
checks), IFEval's on a seeded subset of its 541 prompts (never trained on), the answers' mean length in tokens, and
teacher agreement (notebook 06's loss on text-davinci-003's answers; best-of-n samples the starting model, so its
teacher loss is the starting model's). Best-of-n picks with the same checks it is scored by: it shows what a verifier
buys at inference, an upper bound rather than a fair model comparison. The per-arm table is the ablation runner's
(`understand.stats.summarize`): mean ± SE over seeds and the paired change from `sft`.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..demo.generate import load_model
from ..evaluate.answers import generate_answers, read_answers
from ..evaluate.judge import LocalJudge, run_judge
from ..evaluate.weighted_judge import preference_of, run_weighted_judge
from ..files import append_durable, atomic_write_text, read_complete_jsonl
from ..self_instruct.teacher import Teacher, TeacherConfig, TeacherUnreachable
from ..train.batches import load_records, sample_records
from ..train.recipe import MODEL_DIR, SUMMARY_FILE, read_train_log
from ..understand.ablate import train_or_launch
from ..understand.metrics import Measured, evaluation_sets, teacher_agreement
from ..understand.stats import summarize
from .best_of_n import pick_best
from .constraints import PromptSets, prompt_sets
from .dpo import reference_logps, with_reference_logps
from .pairs import build_pairs, load_pairs, save_pairs
from .settings import FeedbackError, FeedbackSettings
from .verifier import verify

ARMS = ("sft", "best_of_n", "dpo")
BASELINE = "sft"
METRICS = ("constraints_prompt", "constraints_instruction", "ifeval_prompt_strict", "ifeval_instruction_strict",
           "mean_tokens", "teacher_loss")
SETTINGS_FILE = "feedback.json"
RESULTS_FILE = "results.jsonl"
PAIRS_FILE, JUDGED_FILE = "pairs.jsonl", "judged.jsonl"  # per seed: the DPO pairs, and the judge's verdicts
TRAIN_DIR = "dpo"
EVAL_SEED = 0  # the IFEval subset and the teacher's answers are the same for every seed and arm
MAX_LENGTH = 512  # tokens of prompt + answer when scoring teacher agreement


# ---------------------------------------------------------------- prompts and samples


def seed_prompts(settings: FeedbackSettings, records: Sequence[Mapping[str, Any]], seed: int) -> PromptSets:
    """This seed's constrained prompts: the first `train_prompts` and `held_out_prompts` of `prompt_sets`, built
    from a seeded sample of twice as many instructions as needed (all of them when there are fewer)."""
    wanted = math.ceil(2 * (settings.train_prompts + settings.held_out_prompts) / settings.per_instruction)
    sampled = sample_records(list(records), wanted, seed)
    sets = prompt_sets(sampled, seed=seed, per_instruction=settings.per_instruction)
    if len(sets.train) < 1 or len(sets.held_out) < 1:
        raise FeedbackError(f"{len(records)} instructions give {len(sets.train)} training and {len(sets.held_out)} "
                            "held-out prompts: use more instructions or a larger per_instruction")
    return PromptSets(sets.train[:settings.train_prompts], sets.held_out[:settings.held_out_prompts], sets.removed)


def ifeval_as_prompts(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """IFEval rows in the constrained prompts' shape (its prompt as the instruction), for answering and checking."""
    return [{"key": f"ifeval-{r['key']}", "instruction": r["prompt"], "input": "",
             "instruction_id_list": list(r["instruction_id_list"]), "kwargs": list(r["kwargs"])} for r in rows]


def _as_record(prompt: Mapping[str, Any], answer_id: str) -> dict[str, Any]:
    return {"id": answer_id, "instruction": prompt["instruction"], "input": prompt.get("input", "")}


def sample_answers(model: Any, tokenizer: Any, prompts: Sequence[Mapping[str, Any]], settings: FeedbackSettings,
                   path: str | os.PathLike, seed: int) -> list[list[dict[str, Any]]]:
    """`settings.samples` sampled answers to each prompt (rows of `generate_answers`: output, new_tokens, ended),
    appended to `path` as they come; batches already in the file are kept. Each batch has its own seed."""
    records = [_as_record(p, f"{p['key']}#{j}") for p in prompts for j in range(settings.samples)]
    for index, start in enumerate(range(0, len(records), settings.batch_size)):
        generate_answers(model, tokenizer, records[start:start + settings.batch_size], path,
                         batch_size=settings.batch_size, progress=False, temperature=settings.temperature,
                         top_p=1.0, top_k=0, max_new_tokens=settings.max_new_tokens, seed=seed * 100_003 + index)
    done = read_answers(path)
    return [[done[f"{p['key']}#{j}"] for j in range(settings.samples)] for p in prompts]


def greedy_answers(model: Any, tokenizer: Any, prompts: Sequence[Mapping[str, Any]], settings: FeedbackSettings,
                   path: str | os.PathLike) -> list[dict[str, Any]]:
    """One greedy answer to each prompt (rows of `generate_answers`), appended to `path` as they come."""
    records = [_as_record(p, str(p["key"])) for p in prompts]
    done = generate_answers(model, tokenizer, records, path, batch_size=settings.batch_size, progress=False,
                            temperature=0.0, max_new_tokens=settings.max_new_tokens)
    return [done[r["id"]] for r in records]


# ---------------------------------------------------------------- the judge against the verifier


def make_judge(settings: FeedbackSettings, model: Any, tokenizer: Any) -> Any:
    """The pairwise judge: the starting model in this process, or the model at `judge_base_url`."""
    if not settings.judge_base_url:
        return LocalJudge(model, tokenizer)
    return Teacher(TeacherConfig(base_url=settings.judge_base_url, model=settings.judge_model, api=settings.judge_api,
                                 api_key_env=settings.api_key_env, temperature=0.0, max_tokens=16))


def judge_each_pair(judge: Any, pairs: Sequence[Mapping[str, Any]], prompts: Mapping[Any, Mapping[str, Any]],
                method: str) -> list[dict[str, Any]]:
    """The judge's view of each pair, asked in both orders (position bias cancels): `preference` is its
    probability (or, from text, 1 / 0.5 / 0) that the verifier's chosen answer is the better one."""
    items = [{"id": str(p["key"]), "instruction": prompts[p["key"]]["instruction"],
              "input": prompts[p["key"]].get("input", ""), "model_answer": p["chosen"],
              "reference_answer": p["rejected"]} for p in pairs]
    run = run_weighted_judge if method == "logprobs" else run_judge
    results, _usage = run(judge, items, progress=False)
    return [{"key": p["key"], "outcome": r["outcome"], "preference": preference_of(r),
             "chosen_score": p["chosen_score"], "rejected_score": p["rejected_score"]}
            for p, r in zip(pairs, results)]


def judge_agreement(judged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How often the judge sides with the verifier: `rate` (agree / (agree + disagree)) with its binomial standard
    error, over the pairs where it leans either way (preference above or below 0.5); ties and unparsed apart."""
    agree = sum(1 for j in judged if j["preference"] is not None and j["preference"] > 0.5)
    disagree = sum(1 for j in judged if j["preference"] is not None and j["preference"] < 0.5)
    n = agree + disagree
    rate = agree / n if n else None
    se = math.sqrt(rate * (1 - rate) / n) if n else None
    return {"pairs": len(judged), "agree": agree, "disagree": disagree, "undecided": len(judged) - n, "n": n,
            "rate": rate, "se": se}


# ---------------------------------------------------------------- measuring an arm


def constraint_scores(prompts: Sequence[Mapping[str, Any]], outputs: Sequence[str]) -> tuple[float, float]:
    """(prompt-level, instruction-level) strict pass rates: the share of prompts whose constraints all pass, and
    the share of all constraints that pass (IFEval's two accuracies)."""
    checked = [verify(p, o)["passed"] for p, o in zip(prompts, outputs, strict=True)]
    every = [v for passed in checked for v in passed]
    return (sum(all(p) for p in checked) / len(checked), sum(every) / len(every))


def arm_metrics(held_out: Sequence[Mapping[str, Any]], held_rows: Sequence[Mapping[str, Any]],
                ifeval: Sequence[Mapping[str, Any]], ifeval_rows: Sequence[Mapping[str, Any]],
                teacher_loss: float | None) -> dict[str, float | None]:
    """One arm's metrics from its answers (rows with output and new_tokens) to the held-out and IFEval prompts."""
    prompt_level, instruction_level = constraint_scores(held_out, [r["output"] for r in held_rows])
    metrics: dict[str, float | None] = {"constraints_prompt": prompt_level,
                                        "constraints_instruction": instruction_level,
                                        "ifeval_prompt_strict": None, "ifeval_instruction_strict": None}
    if ifeval:
        metrics["ifeval_prompt_strict"], metrics["ifeval_instruction_strict"] = constraint_scores(
            ifeval, [r["output"] for r in ifeval_rows])
    metrics["mean_tokens"] = statistics.fmean(r["new_tokens"] for r in held_rows)
    metrics["teacher_loss"] = teacher_loss
    return metrics


def best_rows(prompts: Sequence[Mapping[str, Any]], samples: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict]:
    """Of each prompt's sampled rows, the one the verifier scores best (`best_of_n.pick_best`)."""
    return [rows[pick_best(p, [r["output"] for r in rows])["index"]] for p, rows in zip(prompts, samples)]


# ---------------------------------------------------------------- one seed


@dataclass
class SeedRun:
    """What one seed produced besides its rows: the prompts, the pairs, the judge's agreement, the DPO run's log."""

    seed: int
    prompts: PromptSets
    pairs: list[dict[str, Any]] = field(default_factory=list)
    judged: list[dict[str, Any]] = field(default_factory=list)
    train_log: list[dict[str, Any]] = field(default_factory=list)


def _row(arm: str, seed: int, metrics: Mapping[str, float | None], **extra: Any) -> dict[str, Any]:
    return {"arm": arm, "seed": seed, "metrics": dict(metrics), **extra}


def load_stored_pairs(run: SeedRun, folder: Path) -> bool:
    """Load the seed's pairs and the judge's verdicts into `run` if an earlier run stored both; says whether it did."""
    pairs_path, judged_path = folder / PAIRS_FILE, folder / JUDGED_FILE
    if not (pairs_path.is_file() and judged_path.is_file()):
        return False
    run.pairs, run.judged = load_pairs(pairs_path), read_complete_jsonl(judged_path)
    return True


def prepare_pairs(settings: FeedbackSettings, model: Any, tokenizer: Any, run: SeedRun, folder: Path) -> None:
    """Samples, pairs, the judge's verdicts and the reference log-probabilities of one seed, stored for a later run
    (`load_stored_pairs`)."""
    samples = sample_answers(model, tokenizer, run.prompts.train, settings, folder / "samples.jsonl", run.seed)
    pairs = build_pairs(run.prompts.train, [[r["output"] for r in rows] for rows in samples], run.seed)
    if not pairs:
        raise FeedbackError(f"seed {run.seed}: every answer to each of the {len(run.prompts.train)} training prompts "
                            "scored the same, so no pair: use more train_prompts, samples or a higher temperature")
    batch = settings.train_config(folder / TRAIN_DIR).global_batch_size
    if len(pairs) < batch:
        raise FeedbackError(f"seed {run.seed}: {len(pairs)} pairs from {len(run.prompts.train)} prompts make no "
                            f"global batch of {batch}: use more train_prompts or samples, or a smaller "
                            "train.global_batch_size")
    asked = pairs if settings.judge_pairs is None else pairs[:settings.judge_pairs]
    by_key = {p["key"]: p for p in run.prompts.train}
    judge = make_judge(settings, model, tokenizer)
    run.judged = judge_each_pair(judge, asked, by_key, settings.judge_method) if asked else []
    run.pairs = with_reference_logps(pairs, reference_logps(model, tokenizer, pairs))
    atomic_write_text(folder / JUDGED_FILE, "".join(json.dumps(j) + "\n" for j in run.judged))
    save_pairs(run.pairs, folder / PAIRS_FILE)


def greedy_metrics(settings: FeedbackSettings, model: Any, tokenizer: Any, run: SeedRun, folder: Path, sets: Any,
                   arm: str) -> dict[str, float | None]:
    """One model's metrics, greedy, on the seed's held-out prompts and the IFEval subset (answers in
    `<arm>_held_out.jsonl` and `<arm>_ifeval.jsonl`), with its teacher loss."""
    ifeval = ifeval_as_prompts(sets.ifeval)
    loss = teacher_agreement(Measured(model, tokenizer, sets, folder))["teacher_loss"]
    held = greedy_answers(model, tokenizer, run.prompts.held_out, settings, folder / f"{arm}_held_out.jsonl")
    ifeval_rows = greedy_answers(model, tokenizer, ifeval, settings, folder / f"{arm}_ifeval.jsonl")
    return arm_metrics(run.prompts.held_out, held, ifeval, ifeval_rows, loss)


def measure_start(settings: FeedbackSettings, model: Any, tokenizer: Any, run: SeedRun, folder: Path,
                  sets: Any) -> list[dict[str, Any]]:
    """The `sft` and `best_of_n` rows of one seed: the starting model greedy, and the best of its samples."""
    sft = greedy_metrics(settings, model, tokenizer, run, folder, sets, "sft")
    ifeval = ifeval_as_prompts(sets.ifeval)
    held_samples = sample_answers(model, tokenizer, run.prompts.held_out, settings, folder / "bon_held_out.jsonl",
                                  run.seed + 1)
    ifeval_samples = sample_answers(model, tokenizer, ifeval, settings, folder / "bon_ifeval.jsonl", run.seed + 2)
    best = arm_metrics(run.prompts.held_out, best_rows(run.prompts.held_out, held_samples), ifeval,
                       best_rows(ifeval, ifeval_samples), sft["teacher_loss"])
    return [_row("sft", run.seed, sft), _row("best_of_n", run.seed, best, n=settings.samples)]


def train_dpo(settings: FeedbackSettings, run: SeedRun, folder: Path, echo: Callable[[str], Any],
              verbose: bool) -> Path:
    """The DPO run of one seed through the training recipe (started over if an earlier attempt did not finish);
    returns its folder."""
    run_dir = folder / TRAIN_DIR
    if not (run_dir / SUMMARY_FILE).is_file() or not (run_dir / MODEL_DIR).is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
        config = settings.train_config(run_dir, str(folder / PAIRS_FILE), run.seed)
        train_or_launch(config, settings.gpus, settings.cpu_processes, echo, verbose)
    run.train_log = read_train_log(run_dir / "train_log.jsonl")
    return run_dir


def measure_dpo(settings: FeedbackSettings, run: SeedRun, folder: Path, run_dir: Path, sets: Any) -> dict[str, Any]:
    """The `dpo` row of one seed: the trained model, greedy, on the same sets."""
    model, tokenizer = load_model(run_dir / MODEL_DIR, cached=False)
    metrics = greedy_metrics(settings, model, tokenizer, run, folder, sets, "dpo")
    del model
    gc.collect()
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    return _row("dpo", run.seed, metrics, pairs=len(run.pairs), steps=summary["steps"])


# ---------------------------------------------------------------- the whole comparison


@dataclass
class FeedbackResult:
    """The rows (one per arm × seed), the per-arm table (`understand.stats.summarize`), and each seed's run."""

    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    seeds: list[SeedRun]

    def agreement(self) -> dict[str, Any]:
        """The judge's agreement with the verifier over every seed's judged pairs."""
        return judge_agreement([j for s in self.seeds for j in s.judged])


def check_output_dir(settings: FeedbackSettings, out: Path) -> None:
    """Refuse an output folder that holds a comparison run under other settings (never mix rows)."""
    path, wanted = out / SETTINGS_FILE, json.loads(json.dumps(asdict(settings)))
    if path.is_file():
        kept = json.loads(path.read_text())
        same = {k: v for k, v in kept.items() if k != "seeds"} == {k: v for k, v in wanted.items() if k != "seeds"}
        if not same:
            raise FeedbackError(f"{out} holds a comparison run under other settings: use a new output_dir")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(wanted, indent=2) + "\n")


def run_seed(settings: FeedbackSettings, records: Sequence[Mapping[str, Any]], seed: int, out: Path, sets: Any,
             done: Mapping[tuple[str, int], dict[str, Any]], echo: Callable[[str], Any],
             verbose: bool) -> tuple[SeedRun, list[dict[str, Any]]]:
    """Every step of one seed not yet done; returns its run and its three rows."""
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    run = SeedRun(seed, seed_prompts(settings, records, seed))
    atomic_write_text(folder / "prompts.json", json.dumps(asdict(run.prompts), indent=1) + "\n")
    rows = [done[(arm, seed)] for arm in ("sft", "best_of_n") if (arm, seed) in done]
    stored = load_stored_pairs(run, folder)
    if not stored or len(rows) < 2:  # else the starting model has nothing left to do
        model, tokenizer = load_model(settings.model_name_or_path)
        if not stored:
            prepare_pairs(settings, model, tokenizer, run, folder)
        if len(rows) < 2:
            rows = measure_start(settings, model, tokenizer, run, folder, sets)
            for row in rows:
                append_durable(out / RESULTS_FILE, json.dumps(row))
        del model
        gc.collect()
    echo(f"seed {seed}: {len(run.pairs)} pairs from {len(run.prompts.train)} prompts; "
         f"judge agrees with the verifier on {judge_agreement(run.judged)['agree']} of {len(run.judged)}")
    run_dir = train_dpo(settings, run, folder, echo, verbose)
    if ("dpo", seed) in done:
        return run, [*rows, done[("dpo", seed)]]
    dpo = measure_dpo(settings, run, folder, run_dir, sets)
    append_durable(out / RESULTS_FILE, json.dumps(dpo))
    return run, [*rows, dpo]


def run_feedback(settings: FeedbackSettings, output_dir: str | os.PathLike, echo: Callable[[str], Any] = print,
                 verbose: bool = False) -> FeedbackResult:
    """Run (or continue) the comparison of every seed into `output_dir`; returns the rows, the table and the runs.
    A judge endpoint that does not answer is refused first (`FeedbackError`). Unless `verbose`, a DPO run in this
    process shows no step bar."""
    out = Path(output_dir)
    if settings.judge_base_url:  # an endpoint that is down fails now, not after the sampling
        try:
            make_judge(settings, None, None).check()
        except TeacherUnreachable as e:
            raise FeedbackError(f"judge_base_url: {e}") from None
    check_output_dir(settings, out)
    records = load_records(settings.data_path)
    sets = evaluation_sets([], settings.teacher_items, 0, EVAL_SEED, MAX_LENGTH, settings.max_new_tokens,
                           ifeval_items=settings.ifeval_items)
    done = {(r["arm"], r["seed"]): r for r in read_complete_jsonl(out / RESULTS_FILE)} \
        if (out / RESULTS_FILE).is_file() else {}
    runs, rows = [], []
    for seed in settings.seeds:
        run, seed_rows = run_seed(settings, records, seed, out, sets, done, echo, verbose)
        runs.append(run)
        rows.extend(seed_rows)
    metrics = [m for m in METRICS if any(r["metrics"].get(m) is not None for r in rows)]
    table = summarize(rows, BASELINE, metrics, list(ARMS), {arm: True for arm in ARMS})
    return FeedbackResult(rows, table, runs)
