"""The ablation runner: train every arm × seed of an ablation at the same budget, measure each on the same
held-out sets, and compare the arms with a baseline, paired by seed.

    python -m alpaca_helpers.understand --spec cpu_course --output_dir runs/ablate            # CPU, in process
    python -m alpaca_helpers.understand.ablate --spec alpaca_7b --gpus 8 --output_dir runs/ablate_7b
    python -m alpaca_helpers.understand --spec cpu_course --seeds 0 1 2 --base data_path=tatsu-lab/alpaca

From Python: `run_ablation(load_spec("cpu_course", seeds=[0, 1, 2]), "runs/ablate")`.

Order of work: check the specification (`spec.parse_spec`); load the pool and hold out the evaluation records,
grade the pool if an arm selects by grade, build and check every arm's data (`arms.arm_records`), all before
any training starts, so that a mistake costs one line and no compute. Then each arm × seed not yet measured:
train (`alpaca_helpers.train`: in this process on the CPU, or its own `accelerate launch` on GPUs with the plan
printed first), measure (`understand.metrics`), append one row to `results.jsonl` (fsync'd), and rewrite the
tables. A run killed at any point, even with kill -9, continues where it stopped when started again with the
same output folder: finished arm × seeds are skipped (a row measured under other settings is an error, never
mixed in) and an unfinished one starts over, which gives the same numbers on the same machine.

Outputs in `output_dir`: `ablation.json` (the specification), `eval_sets.json`, `grades.jsonl`,
`data/<arm>[-seed<s>].json` (each arm's training data), `runs/<arm>-seed<s>/` (the training run: log, summary,
answers; its model only with `keep_models`), `results.jsonl` (one row per arm × seed), `results.csv` (tidy: one
row per arm, seed and metric) and `results_by_arm.csv` (mean ± SE per arm and metric, and the paired difference
with the baseline). With `report_to` in the base settings, every training run and its measurements also go to
TensorBoard or W&B (`train.tracking`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from ..cli import ArgumentParser
from ..data import DataSourceError, source_counts
from ..demo.generate import load_model
from ..files import append_durable, atomic_write_text, read_complete_jsonl
from ..models import resolve_model
from ..paths import resolve
from ..precision import PrecisionError
from ..self_instruct.teacher import TeacherError
from ..train.config import TrainConfig, TrainConfigError, check_run, report_targets, train_args
from ..train.launch import (
    LaunchError,
    check_gpus,
    launch_command,
    launch_summary,
    run_streaming,
    show_command,
    total_processes,
)
from ..train.recipe import MODEL_DIR, SUMMARY_FILE, read_train_log, train
from ..train.tokenize import build_dataset
from ..train.tracking import Tracker
from .arms import ARM_KINDS, Arm, Pool, arm_records, make_pool
from .errors import AblationError
from .grade import grade_records
from .metrics import EvalSets, evaluation_sets, measure
from .spec import AblationSpec, arm_config, load_spec
from .stats import summarize, summary_markdown

RESULTS_FILE = "results.jsonl"
TIDY_FILE = "results.csv"
TABLE_FILE = "results_by_arm.csv"
SPEC_FILE = "ablation.json"
EVAL_SETS_FILE = "eval_sets.json"
GRADES_FILE = "grades.jsonl"
CONSOLE_FILE = "console.log"  # one arm × seed's full console, in its run folder
LINE_METRICS = ("val_loss", "teacher_loss", "xstest_refusal", "xstest_over_refusal")  # shown in its one line


@dataclass(frozen=True)
class Job:
    """One arm × seed: its training configuration, how many records it trains on, and its fingerprint."""

    arm: Arm
    seed: int
    config: TrainConfig
    records: int
    fingerprint: str

    @property
    def name(self) -> str:
        return f"{self.arm.name}-seed{self.seed}"


@dataclass
class Prepared:
    """Everything decided before training: the pool, the evaluation sets, the pool's grades and the jobs."""

    spec: AblationSpec
    out: Path
    pool: Pool
    sets: EvalSets
    grades: list[float | None] | None
    data: dict[str, list[dict[str, Any]]]  # data file name -> records
    jobs: list[Job]


@dataclass
class AblationResult:
    """The rows of this ablation's arm × seeds (`results.jsonl`) and the per-arm table (`results_by_arm.csv`)."""

    rows: list[dict[str, Any]]
    table: list[dict[str, Any]]
    output_dir: Path
    spec: AblationSpec


def seed_dependent(arm: Arm) -> bool:
    """Whether the arm's records change with the run seed (one data file per seed)."""
    return ARM_KINDS[arm.kind].seeded(arm.params)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def data_text(records: Sequence[dict[str, Any]]) -> str:
    """An arm's data file as written (a JSON list, `data.save_alpaca`'s format)."""
    return json.dumps(list(records), ensure_ascii=False, indent=4) + "\n"


def fingerprint(cfg: TrainConfig, data: str, sets: EvalSets, spec: AblationSpec) -> str:
    """What a result depends on: the training settings (not where they write), the data, the evaluation sets,
    the metrics and the hardware layout."""
    settings = {k: v for k, v in vars(cfg).items() if k not in ("output_dir", "data_path", "report_to")}
    key = {"settings": settings, "data": _sha(data), "evaluation": sets.identity(),
           "metrics": list(spec.evaluation.metrics), "gpus": spec.gpus, "cpu_processes": spec.cpu_processes}
    return _sha(json.dumps(key, sort_keys=True, default=str))[:16]


def _tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(model))


def kept_examples(records: Sequence[dict[str, Any]], tokenizer: Any, max_length: int) -> int:
    """How many of the records training keeps at `max_length` (a prompt that leaves no room is dropped)."""
    return build_dataset(records, tokenizer, max_length=max_length).stats.kept if records else 0


def arm_jobs(spec: AblationSpec, pool: Pool, sets: EvalSets, grades: list[float | None] | None, tokenizer: Any,
             out: Path) -> tuple[dict[str, list[dict[str, Any]]], list[Job]]:
    """Every arm's records (one file per arm, or per arm and seed when the seed draws them) and every arm × seed
    job, each checked: it must make at least one global batch of examples training keeps."""
    base = spec.base_config()
    data: dict[str, list[dict[str, Any]]] = {}
    fitting: dict[tuple[str, int], int] = {}  # (data file, max length) -> examples training keeps
    jobs = []
    for arm in spec.arms.values():
        for seed in spec.seeds:
            file = f"{arm.name}-seed{seed}.json" if seed_dependent(arm) else f"{arm.name}.json"
            if file not in data:
                try:
                    data[file] = arm_records(arm, pool, seed, grades, tokenizer, base.model_max_length)
                except AblationError:
                    raise
                except (DataSourceError, ValueError) as e:  # another data set that cannot be loaded
                    raise AblationError(f"arm {arm.name!r}: {e}") from None
                if not data[file]:
                    raise AblationError(f"arm {arm.name!r}: draws no records from the pool of {len(pool.train)}")
            cfg = arm_config(spec, arm, seed, out / "data" / file, out / "runs" / f"{arm.name}-seed{seed}")
            try:  # the batch split over this many processes, and the rest the recipe checks before a model loads
                check_run(cfg, total_processes(spec.gpus, spec.cpu_processes), on_gpu=spec.gpus > 0)
            except TrainConfigError as e:
                raise AblationError(f"arm {arm.name!r}: {e}") from None
            if (file, cfg.model_max_length) not in fitting:
                fitting[file, cfg.model_max_length] = kept_examples(data[file], tokenizer, cfg.model_max_length)
            kept = fitting[file, cfg.model_max_length]
            if kept < cfg.global_batch_size:
                raise AblationError(f"arm {arm.name!r}: {kept} of its {len(data[file])} records fit model_max_length "
                                    f"{cfg.model_max_length}: no global batch of {cfg.global_batch_size}")
            jobs.append(Job(arm, seed, cfg, len(data[file]), fingerprint(cfg, data_text(data[file]), sets, spec)))
    return data, jobs


def prepare(spec: AblationSpec, output_dir: str | os.PathLike, progress: bool = True,
            echo: Callable[[str], Any] = print) -> Prepared:
    """Load the pool, hold out the evaluation records, grade the pool (if needed), build and check every arm's
    data, and write the specification and the evaluation sets; no training. Every mistake is an `AblationError`."""
    import datasets

    datasets.disable_progress_bars()  # the run's progress is shown by its own lines and bars
    if spec.gpus:
        try:
            check_gpus(spec.gpus)
        except LaunchError as e:
            raise AblationError(str(e)) from None
    out = resolve(output_dir)
    base = spec.base_config()
    ev = spec.evaluation
    tokenizer = _tokenizer(base.model_name_or_path)
    try:
        pool = make_pool(base.data_path, base.max_examples, base.data_columns, ev.heldout, ev.seed, tokenizer,
                         base.model_max_length)
    except AblationError:
        raise
    except (DataSourceError, TrainConfigError, ValueError) as e:
        raise AblationError(f"base data {base.data_path}: {e}") from None
    sets = evaluation_sets(pool.heldout, ev.teacher_items, ev.shape_items, ev.seed, ev.max_length, ev.max_new_tokens,
                           ev.ifeval_items, ev.xstest_items)
    echo(f"pool: {len(pool.train)} records from {base.data_path} ({pool.unfit} left out: their prompts fill "
         f"model_max_length {base.model_max_length}), {len(pool.heldout)} held out for the validation loss; "
         f"{len(sets.teacher)} teacher answers and {len(sets.prompts)} prompts for every arm"
         + (f", {len(sets.ifeval)} IFEval prompts" if sets.ifeval else "")
         + (f", {len(sets.xstest)} XSTest prompts" if sets.xstest else ""))
    graded = any(ARM_KINDS[a.kind].graded(a.params) for a in spec.arms.values())
    out.mkdir(parents=True, exist_ok=True)
    grades = None
    if graded:
        grades = grade_records(pool.train, spec.grader, out / GRADES_FILE, progress=progress)
    data, jobs = arm_jobs(spec, pool, sets, grades, tokenizer, out)
    for file, records in data.items():
        atomic_write_text(out / "data" / file, data_text(records))
    atomic_write_text(out / SPEC_FILE, json.dumps(spec.as_dict(), indent=2, default=str) + "\n")
    atomic_write_text(out / EVAL_SETS_FILE, json.dumps(sets.identity(), indent=2, ensure_ascii=False) + "\n")
    return Prepared(spec, out, pool, sets, grades, data, jobs)


def arm_overview(prepared: Prepared) -> list[dict[str, Any]]:
    """Per arm, at the first seed: its records, their mean response length in words, their mean grade (when the
    pool was graded), their sources, and whether the loss covers the prompt."""
    def key(r: dict[str, Any]) -> tuple[str, str, str]:
        return r["instruction"], r.get("input", ""), r["output"]

    grade = {key(r): g for r, g in zip(prepared.pool.train, prepared.grades or []) if g is not None}
    rows = []
    for job in (j for j in prepared.jobs if j.seed == prepared.spec.seeds[0]):
        records = prepared.data[Path(job.config.data_path).name]
        graded = [grade[key(r)] for r in records if key(r) in grade]
        rows.append({"arm": job.arm.name, "records": len(records),
                     "response_words": statistics.fmean(len(r["output"].split()) for r in records),
                     "grade": statistics.fmean(graded) if graded else None, "sources": source_counts(records),
                     "train_on_prompt": job.config.train_on_prompt})
    return rows


def finished_rows(prepared: Prepared) -> dict[tuple[str, int], dict[str, Any]]:
    """The rows of `results.jsonl` for this ablation's jobs; a row measured under other settings is an error."""
    wanted = {(j.arm.name, j.seed): j for j in prepared.jobs}
    done = {}
    for row in read_complete_jsonl(prepared.out / RESULTS_FILE):
        key = (row["arm"], row["seed"])
        if key not in wanted:
            continue
        if row["fingerprint"] != wanted[key].fingerprint:
            raise AblationError(f"{prepared.out / RESULTS_FILE}: {wanted[key].name} was measured under other settings "
                                "(data, training or evaluation); use a new output_dir to run this ablation")
        done[key] = row
    return done


def train_or_launch(config: TrainConfig, gpus: int, cpu_processes: int, echo: Callable[[str], Any],
                    verbose: bool = True) -> dict[str, Any]:
    """Train one run: in this process on one CPU process, else as its own `accelerate launch` (the plan and the
    command printed first). Unless `verbose`, an in-process run shows no step bar (its console goes to a file).
    Returns the run's `train_summary.json`."""
    if gpus == 0 and cpu_processes == 1:
        return train(replace(config, progress_bar=verbose))
    run_dir = Path(config.output_dir)
    settings = run_dir / "arm_config.yaml"
    atomic_write_text(settings, yaml.safe_dump({k: v for k, v in vars(config).items() if k != "output_dir"}))
    echo(launch_summary(config, gpus, cpu_processes))
    cmd = launch_command(train_args(settings, {}, run_dir), gpus=gpus, cpu_processes=cpu_processes)
    echo(show_command(cmd))
    run_streaming(cmd, echo=echo)
    return json.loads((run_dir / SUMMARY_FILE).read_text())


def train_job(job: Job, spec: AblationSpec, echo: Callable[[str], Any], verbose: bool = True) -> dict[str, Any]:
    """Train one arm × seed (`train_or_launch` with the ablation's processes)."""
    return train_or_launch(job.config, spec.gpus, spec.cpu_processes, echo, verbose)


@contextlib.contextmanager
def console_log(path: Path, verbose: bool, echo: Callable[[str], Any]) -> Iterator[Callable[[str], Any]]:
    """Where one arm × seed's console goes: with `verbose`, to `echo` as it comes; otherwise into `path` (the
    in-process run's stdout and stderr, or the launched run's lines). Quiet, a line naming a warning is still
    passed on to the real stderr, and a failure shows the log's last lines before it propagates."""
    if verbose:
        yield echo
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    stderr = sys.stderr
    with path.open("w", encoding="utf-8") as log:
        def write(line: str) -> None:
            log.write(line + "\n")
            log.flush()

        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield write
        except BaseException:
            log.flush()
            tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
            print(f"{path} (last lines):\n" + "\n".join(tail), file=stderr, flush=True)
            raise
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if "Warning" in line:  # never hidden in the file
            print(line, file=stderr, flush=True)


def run_job(job: Job, prepared: Prepared, echo: Callable[[str], Any], verbose: bool = True) -> dict[str, Any]:
    """Train and measure one arm × seed, append its row to `results.jsonl` durably, and return the row. Unless
    `verbose`, the run's console goes to `runs/<arm>-seed<s>/console.log` instead of `echo`."""
    spec, run_dir = prepared.spec, Path(job.config.output_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # what an interrupted attempt left
    started = time.perf_counter()
    with console_log(run_dir / CONSOLE_FILE, verbose, echo) as say:
        summary = train_job(job, spec, say, verbose)
        trained = time.perf_counter()
        model, tokenizer = load_model(run_dir / MODEL_DIR, cached=False)
        metrics = measure(model, tokenizer, prepared.sets, run_dir, spec.evaluation.metrics)
        del model
        gc.collect()
    log = read_train_log(run_dir / "train_log.jsonl")
    row = {"arm": job.arm.name, "kind": job.arm.kind, "params": job.arm.params, "seed": job.seed,
           "fingerprint": job.fingerprint, "records": job.records, "trained_examples": summary["examples"],
           "steps": summary["steps"],
           "examples_seen": summary["steps"] * job.config.global_batch_size,
           "trained_tokens": sum(r["trained_tokens"] for r in log), "final_train_loss": summary["final_loss"],
           "metrics": metrics,
           "timing": {"train_s": round(trained - started, 1), "measure_s": round(time.perf_counter() - trained, 1)}}
    append_durable(prepared.out / RESULTS_FILE, json.dumps(row))
    if not spec.keep_models:
        shutil.rmtree(run_dir / MODEL_DIR, ignore_errors=True)
    report(job, row, run_dir)
    return row


def report(job: Job, row: dict[str, Any], run_dir: Path) -> None:
    """With `report_to`, the measurements of one arm × seed as `ablation/<metric>` scalars at its last step."""
    targets = report_targets(job.config.report_to)
    if not targets:
        return
    config = {"arm": job.arm.name, "kind": job.arm.kind, "seed": job.seed, **job.arm.params}
    tracker = Tracker(targets, run_dir, config, run_name=f"{job.name}-measured")
    tracker.log_scalars({f"ablation/{k}": float(v) for k, v in row["metrics"].items() if v is not None}, row["steps"])
    tracker.close()


def tidy_csv(rows: Sequence[dict[str, Any]]) -> str:
    """One CSV line per arm, seed and metric (arm, kind, seed, records, steps, examples_seen, metric, value)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arm", "kind", "seed", "records", "steps", "examples_seen", "metric", "value"])
    for row in rows:
        for metric, value in row["metrics"].items():
            writer.writerow([row["arm"], row["kind"], row["seed"], row["records"], row["steps"], row["examples_seen"],
                             metric, "" if value is None else repr(float(value))])
    return buffer.getvalue()


def table_csv(table: Sequence[dict[str, Any]]) -> str:
    """`stats.summarize`'s rows as CSV."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]) if table else ["arm"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def metric_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(m for r in rows for m in r["metrics"]))


def write_tables(prepared: Prepared, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite `results.csv` and `results_by_arm.csv` (atomically) from the rows; returns the per-arm table."""
    spec = prepared.spec
    table = summarize(rows, spec.baseline, metric_names(rows), list(spec.arms),
                      {name: seed_dependent(arm) for name, arm in spec.arms.items()})
    atomic_write_text(prepared.out / TIDY_FILE, tidy_csv(rows))
    atomic_write_text(prepared.out / TABLE_FILE, table_csv(table))
    return table


def job_line(k: int, total: int, job: Job, row: dict[str, Any], log: Path | None) -> str:
    """The one line a finished arm × seed prints: what it trained, how long it took, its first metrics (3
    significant digits) and where its full console log is."""
    shown = [f"{m} {v:.3g}" for m, v in row["metrics"].items() if v is not None and m in LINE_METRICS][:3]
    return (f"[{k}/{total}] {job.name}: {job.records} records, {row['steps']} steps of "
            f"{job.config.global_batch_size}; train {row['timing']['train_s']:.0f} s, "
            f"measure {row['timing']['measure_s']:.0f} s; " + ", ".join(shown)
            + (f"; log {log}" if log is not None else ""))


def run_ablation(spec: AblationSpec | str | os.PathLike | dict[str, Any], output_dir: str | os.PathLike,
                 progress: bool = True, echo: Callable[[str], Any] = print, verbose: bool = False) -> AblationResult:
    """Run (or continue) an ablation into `output_dir`; returns its rows and per-arm table (see the module
    docstring). Mistakes raise `AblationError` before any training.

    Each arm × seed prints one line when it is measured (with `progress`, under a bar over all of them); its
    full console (the training's plan, steps and summary, or the launched command's output) is in
    `runs/<arm>-seed<s>/console.log`. `verbose` streams that console to `echo` instead."""
    spec = spec if isinstance(spec, AblationSpec) else load_spec(spec)
    prepared = prepare(spec, output_dir, progress, echo)
    done = finished_rows(prepared)
    todo = [j for j in prepared.jobs if (j.arm.name, j.seed) not in done]
    echo(f"{len(prepared.jobs)} arm × seed runs ({len(spec.arms)} arms × {len(spec.seeds)} seeds), "
         f"{len(done)} already measured; budget {prepared.jobs[0].config.max_steps} steps per run"
         + ("" if spec.budget.steps is not None else f" ({spec.budget.examples} examples seen)")
         + ("" if verbose or not todo
            else f"; each run's full log: {prepared.out / 'runs' / '<arm>-seed<s>' / CONSOLE_FILE}"))
    bar = tqdm(total=len(todo), desc="arm × seed runs", unit="run", disable=not progress or not todo,
               dynamic_ncols=True)
    say = tqdm.write if echo is print else echo  # a line printed under the bar, not through it
    for k, job in enumerate(todo, 1):
        bar.set_postfix_str(job.name)
        if verbose:
            say(f"[{k}/{len(todo)}] {job.name}: {job.arm.kind} {job.arm.params or ''} — {job.records} records, "
                f"{job.config.max_steps} steps of {job.config.global_batch_size}")
        row = run_job(job, prepared, say, verbose)
        bar.update(1)
        if not verbose:
            say(job_line(k, len(todo), job, row, Path(job.config.output_dir) / CONSOLE_FILE))
        done[(job.arm.name, job.seed)] = row
        write_tables(prepared, [done[(j.arm.name, j.seed)] for j in prepared.jobs if (j.arm.name, j.seed) in done])
    bar.close()
    rows = [done[(j.arm.name, j.seed)] for j in prepared.jobs]
    return AblationResult(rows, write_tables(prepared, rows), prepared.out, spec)


def format_table(result: AblationResult, digits: int = 3, metrics: Sequence[str] | None = None) -> str:
    """A Markdown table: per arm, its records and each metric's mean ± SE over seeds (all metrics, or those
    named), with the paired difference against the baseline and its 95% interval."""
    metrics = list(metrics) if metrics is not None else metric_names(result.rows)
    records = {r["arm"]: r["records"] for r in result.rows}
    return summary_markdown(result.table, list(result.spec.arms), metrics, digits, {"records": records})


def _parse_setting(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep:
        raise AblationError(f"--base {text!r}: expected name=value, e.g. data_path=tatsu-lab/alpaca")
    return name.strip(), yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m alpaca_helpers.understand.ablate", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="cpu_course", help="an ablation preset (configs/ablations/) or a YAML path")
    parser.add_argument("--output_dir", default="runs/ablate", help="results, data and runs (relative = repo root)")
    parser.add_argument("--seeds", type=int, nargs="+", help="run seeds (default: the spec's)")
    parser.add_argument("--select_n", type=int, help="records every selection arm keeps (default: the spec's)")
    parser.add_argument("--budget_steps", type=int, help="equal optimizer steps for every arm")
    parser.add_argument("--budget_examples", type=int, help="equal examples seen for every arm")
    parser.add_argument("--gpus", type=int, help="0: train in this process on CPU; N: each arm on N GPUs")
    parser.add_argument("--cpu_processes", type=int, help="with gpus 0: launch each arm as N CPU processes")
    parser.add_argument("--base", action="append", default=[], metavar="NAME=VALUE",
                        help="a base training setting, e.g. data_path=tatsu-lab/alpaca (repeatable)")
    parser.add_argument("--keep_models", action="store_true", default=None, help="keep every arm's model folder")
    parser.add_argument("--verbose", action="store_true", help="stream every run's console here, not only into "
                        "runs/<arm>-seed<s>/console.log")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, select_n=args.select_n, budget_steps=args.budget_steps,
                         budget_examples=args.budget_examples, base=dict(map(_parse_setting, args.base)),
                         seeds=args.seeds, gpus=args.gpus, cpu_processes=args.cpu_processes,
                         keep_models=args.keep_models)
        result = run_ablation(spec, args.output_dir, verbose=args.verbose)
    except Exception as e:  # one line for what a user can fix; anything else is a bug and keeps its traceback
        if not isinstance(e, (AblationError, TrainConfigError, DataSourceError, LaunchError, TeacherError,
                              PrecisionError, FileNotFoundError)):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(format_table(result))
    print(f"results in {result.output_dir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
