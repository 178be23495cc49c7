import ast
import gc
import weakref

import nbformat
import papermill
import pytest
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from alpaca_helpers.course import NOTEBOOKS_DIR
from alpaca_helpers.data import load_seed_tasks, save_alpaca
from alpaca_helpers.demo.generate import load_model, release_models
from alpaca_helpers.train.launch import available_gpus
from alpaca_helpers.train.rehearsal import small_llama


def test_notebook_04_trains_on_cpu_and_compares_answers(execute_notebook, tmp_path):
    """The notebook end to end under papermill: launch (1 CPU process), live log, validation loss, curves,
    TensorBoard, save, answers; on a chained course set (seed + generated records, as notebook 02 writes it)."""
    generated = [{"instruction": f"Name {n} colours.", "input": "", "output": "red", "source": "self-instruct"}
                 for n in range(1, 41)]
    train_set = save_alpaca([{**r, "source": "seed"} for r in load_seed_tasks()] + generated,
                            tmp_path / "train_set.json")
    summary, executed = execute_notebook(
        "04_train", gpus=0, data_path=str(train_set), max_steps=2, max_examples=16, model_max_length=96,
        max_new_tokens=8, report_to="tensorboard", extra_args="--global_batch_size 2 --per_device_train_batch_size 1")
    # cpu_default holds out 20% of its seeded sample; the sample draws on both sources
    assert summary["validation_examples"] >= 2 and len(summary["eval_losses"]) == 1
    assert summary["eval_loss_at_start"] > 0 and summary["eval_loss"] > 0
    assert set(summary["sources"]) == {"seed", "self-instruct"} and sum(summary["sources"].values()) <= 13
    events = EventAccumulator(str(tmp_path / "course" / "04_train" / "tensorboard")).Reload()
    assert "eval/loss" in events.Tags()["scalars"]
    assert summary["steps"] == 2 and summary["world_size"] == 1 and not summary["fsdp"]
    assert summary["command"].startswith("accelerate launch ") and "--cpu" in summary["command"]
    assert summary["trained_tokens_per_s"] > 0
    # The default instruction is one the base model answers with nothing (the fine-tuned one answers it after the
    # default run's 24 steps); two tiny steps, the first at warm-up's learning rate 0, may leave it so.
    assert set(summary["answers"]) == {"base", "fine-tuned"} and summary["answer_tokens"]["base"] == 0
    assert all(isinstance(a, str) for a in summary["answers"].values())
    out = tmp_path / "course" / "04_train"
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "train_log.jsonl").read_text().count("\n") == 2
    assert len(summary["epoch_mean_loss"]) == 1 and not summary["lora"] and summary["adapter_dir"] is None
    assert summary["models_released"] == 2 and summary["num_records"] == 16  # base and tuned; the sample
    AutoModelForCausalLM.from_pretrained(summary["model_dir"])  # a plain Hugging Face folder
    text = executed.read_text()
    assert "step 2/2 loss" in text  # the run's own output was streamed into the notebook
    # FSDP told with the plan's numbers for 2 ranks, though this run is one process
    assert "FSDP full shard over 2 process(es): 30 decoder layers" in text and "reduce-scatter" in text
    assert "CUDA context" not in text and "GPU(s)" not in text  # a CPU plan speaks of processes
    # the step by hand, shown and run on the run's step-1 examples: the same loss as the run's first step
    assert "def train_step_by_hand" in text and "loss.backward()" in text
    # in fp32 to 0.1%; where the CPU has bf16 (`bf16: auto`) the run rounds and the notebook says so
    tolerance = 1e-3 if summary["compute_dtype"] == "fp32" else 1e-2
    assert abs(summary["by_hand_loss"] - summary["first_loss"]) < tolerance * summary["first_loss"]
    caveat = f"the run computed in {summary['compute_dtype']} and the step by hand in fp32"
    assert (caveat in text) == (summary["compute_dtype"] != "fp32")
    # under the answers, what changed, or why nothing did (two steps, the first at warm-up's learning rate 0)
    if summary["answers_identical"]:
        assert "note: both answers are the same" in text
    else:
        assert "what changed: the base model gave" in text
    assert set(summary["answer_tokens"]) == {"base", "fine-tuned"}


def test_notebook_04_lora_saves_adapters_and_a_merged_plain_folder(execute_notebook, tmp_path):
    """lora=True through the notebook: a frozen base, adapters alone in adapter/, merged weights in model/."""
    summary, _ = execute_notebook(
        "04_train", gpus=0, lora=True, max_steps=2, max_examples=8, model_max_length=96, max_new_tokens=8,
        extra_args="--global_batch_size 2 --per_device_train_batch_size 2 --lora_target_modules q_proj,v_proj")
    assert summary["lora"] and summary["steps"] == 2 and "--lora=True" in summary["command"]
    assert summary["by_hand_loss"] is None  # the step by hand is full fine-tuning's: skipped for LoRA
    assert 0 < summary["trainable_parameters"] < 1_000_000  # rank 16 on q and v of 30 layers: 0.9M of 135M
    adapter = load_file(f"{summary['adapter_dir']}/adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    merged = load_file(f"{summary['model_dir']}/model.safetensors")
    assert not any("lora" in name for name in merged)


def test_notebook_04_fails_clearly_when_asking_for_absent_gpus(execute_notebook):
    """The headline command, `papermill ... -p gpus 8`, on a machine without 8 GPUs: one line, first thing."""
    if available_gpus() >= 8:
        pytest.skip("this machine has 8 GPUs: the headline command would run")
    with pytest.raises(papermill.PapermillExecutionError, match=r"gpus=8 but this machine has \d+ GPU") as failed:
        execute_notebook("04_train", gpus=8)
    assert failed.value.ename == "LaunchError" and len(failed.value.evalue.splitlines()) == 1


def test_notebook_04_refuses_a_tokenizer_that_cannot_work_in_one_line_before_launching(execute_notebook, tmp_path,
                                                                                         boundary_changing_tokenizer):
    """The 7B preset with a model whose tokenizer cannot keep a response's text: notebook 04 stops at its
    first cell, in one line naming the tokenizer, and never reaches the launch (fault injection: a tokenizer
    that marks every word; every real family passes, test_tokenizer_families.py)."""
    folder = small_llama(tmp_path / "llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    boundary_changing_tokenizer.save_pretrained(folder)
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        execute_notebook("04_train", gpus=0, preset="alpaca_7b", model_name_or_path=str(folder), data_path="seed")
    assert failed.value.ename == "LaunchError" and len(failed.value.evalue.splitlines()) == 1
    assert failed.value.evalue.startswith(f"the tokenizer of {folder}") and "alpaca_7b.yaml" in failed.value.evalue
    assert failed.value.exec_count == 3  # the inputs cell: nothing was launched


def test_answering_releases_the_models_it_loaded(default_model_dir):
    """Notebook 04 calls `release_models` after its answers: the cached base and tuned models (about 40 GB of
    GPU 0 at 7B) are dropped, so a re-run of the training cell finds the memory free."""
    model, _ = load_model(default_model_dir, device="cpu")
    alive = weakref.ref(model)
    assert load_model(default_model_dir, device="cpu")[0] is model  # cached: a second call loads nothing
    del model
    gc.collect()
    assert alive() is not None  # the cache holds it
    assert release_models() >= 1
    assert alive() is None


def test_notebook_04_parameters_are_all_visible_to_papermill():
    """papermill silently skips a parameter line it cannot parse (e.g. an `=` in its comment)."""
    path = NOTEBOOKS_DIR / "04_train.ipynb"
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assigned = {node.targets[0].id for node in ast.parse(cell.source).body}
    assert set(papermill.inspect_notebook(str(path))) == assigned
