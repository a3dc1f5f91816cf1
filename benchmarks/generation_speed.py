"""Benchmark: text generation's training throughput and serving overhead, each against an anchor.

On the bundled real SMS corpus, formatted as the text-generation task formats it (the default
``prompt_template``, `` spam`` / `` ham`` completions), with the bundled MiniLM as a causal LM (the
offline stand-in), on this machine's CPU, side by side in one run:

- **G4, training**: the project's finetune against the naive recipe, both one epoch on the same
  train rows with the loss on the completion only and the same seed, each a Hugging Face
  ``Trainer`` in this process: ``naive`` pads every row to ``max_length`` 128 and trains in
  batches of 8 in random order at the Trainer's default learning rate 5e-5; ``project`` is the
  task's own ``training_parts`` (padded per batch to its longest row, rows grouped by length) with
  the ``local`` profile's text-generation settings (batches of 16, learning rate 1e-4). Throughput
  is non-pad tokens trained per second of ``Trainer.train()``; the validation loss (completion
  tokens, the same rows and collator for both) says whether the speed cost quality.
- **G3, serving**: tokens generated per second through ``mlflow.pyfunc`` (the model logged as the
  log_model step logs it, ``llm/v1/completions`` with the template, loaded back) against the
  direct ``transformers`` pipeline call on the same model and the same formatted prompts, one
  prompt at a time as MLflow calls the pipeline, greedy, every prompt generating exactly
  ``--new-tokens`` tokens (``min_new_tokens``), alternating the two, medians of ``--repeat``.

    python benchmarks/generation_speed.py                    # 640 train rows, 64 prompts, 3 repeats
    python benchmarks/generation_speed.py --train-rows 64 --prompts 8 --repeat 1   # the suite's size

Figures: ``finetune_tokens_per_s_over_naive`` (target >= 2.0), ``val_loss_gap`` (project - naive,
target <= 0: equal or better), ``pyfunc_tokens_per_s_over_pipeline`` (target >= 0.85), and
without target the throughputs themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
TARGETS = {  # figure: (target, better)
    "finetune_tokens_per_s_over_naive": (2.0, "higher"),
    "val_loss_gap": (0.0, "lower"),
    "pyfunc_tokens_per_s_over_pipeline": (0.85, "higher"),
}
NAIVE = {"max_length": 128, "train_batch_size": 8, "learning_rate": 5e-5, "group_by_length": False}


def rows(n_train: int, n_validation: int) -> dict[str, Any]:
    """The bundled corpus as prompt/completion rows, encoded as tokenize encodes them."""
    import dataclasses

    from hf_finetune import corpus, hub
    from hf_finetune.profiles import load_config
    from hf_finetune.tasks import registry

    cfg = load_config("local", {"task": "text-generation"})
    task = registry.task_of(cfg)
    cfg = dataclasses.replace(cfg, max_rows=n_train + n_validation + 40)
    _, _, splits = corpus.prepared(cfg, task)
    from transformers import AutoTokenizer

    resolved = hub.resolve_base_model(cfg.base_model)
    tokenizer = task.prepare_tokenizer(AutoTokenizer.from_pretrained(resolved))
    frames = {
        "train": task.encode(splits["train"].head(n_train), tokenizer, cfg, {}),
        "validation": task.encode(splits["validation"].head(n_validation), tokenizer, cfg, {}),
        "test": task.encode(splits["test"], tokenizer, cfg, {}),
    }
    return {"cfg": cfg, "task": task, "tokenizer": tokenizer, "resolved": resolved, "frames": frames}


def train_once(data: dict[str, Any], variant: str, out: Path) -> dict[str, float]:
    """One epoch of ``variant``; non-pad tokens per second and the validation loss."""
    import dataclasses

    import numpy as np
    from transformers import Trainer, TrainingArguments

    from hf_finetune import training
    from hf_finetune.tasks.text_generation.causal import IGNORE

    cfg, task, tokenizer = data["cfg"], data["task"], data["tokenizer"]
    settings = {"num_train_epochs": 1.0, "early_stopping_patience": 0, "best_model_metric": "last"}
    if variant == "naive":
        settings |= NAIVE
    cfg = dataclasses.replace(cfg, **settings)
    model = task.model_for_training(data["resolved"], {}, cfg)
    parts = task.training_parts(data["frames"], {}, tokenizer, cfg)
    train = parts.train
    if variant == "naive":  # every row padded to max_length: what the collator then sees
        pad = tokenizer.pad_token_id
        train = [
            {
                "input_ids": f["input_ids"] + [pad] * (NAIVE["max_length"] - len(f["input_ids"])),
                "attention_mask": f["attention_mask"] + [0] * (NAIVE["max_length"] - len(f["input_ids"])),
                "labels": f["labels"] + [IGNORE] * (NAIVE["max_length"] - len(f["input_ids"])),
            }
            for f in train
        ]
    args = training.training_arguments(cfg, "cpu", str(out)) | parts.arguments
    args |= {"save_strategy": "no", "load_best_model_at_end": False, "eval_strategy": "no"}
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=train,
        eval_dataset=parts.validation,
        processing_class=tokenizer,
        data_collator=parts.collator,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = float(np.sum([sum(f["attention_mask"]) for f in train]))
    loss = float(trainer.evaluate()["eval_loss"])
    return {"tokens_per_s": tokens / seconds, "val_loss": loss, "train_s": seconds}


def serving(
    data: dict[str, Any], n_prompts: int, new_tokens: int, repeat: int, root: Path
) -> dict[str, float]:
    """Tokens per second: the direct pipeline, then the logged pyfunc model, alternating."""
    import mlflow
    import pandas as pd
    import transformers

    from hf_finetune import save_modes
    from hf_finetune.tasks.text_generation.causal import align_special_ids, causal_config

    cfg, task, tokenizer = data["cfg"], data["task"], data["tokenizer"]
    folder = root / "model"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        data["resolved"], config=causal_config(data["resolved"])
    )
    align_special_ids(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    raw = data["frames"]["test"]["prompt"].head(n_prompts).tolist()
    formatted = [cfg.prompt_template.format(prompt=p) for p in raw]
    generation = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    with mlflow.start_run():
        info = save_modes.log_candidate(
            task,
            folder,
            "full",
            {
                "name": "model",
                "task": task.mlflow_task,
                "model_config": generation,
                "prompt_template": cfg.prompt_template,
                "pip_requirements": save_modes.pip_requirements(save_modes.installed_versions()),
            },
            "bench/stand-in",
        )
    served = mlflow.pyfunc.load_model(info.model_uri)
    direct = transformers.pipeline("text-generation", model=str(folder), tokenizer=str(folder))
    direct(formatted[:2], **generation)  # warm both up once
    served.predict(pd.DataFrame({"prompt": raw[:2]}))
    timings: dict[str, list[float]] = {"pipeline": [], "pyfunc": []}
    for _ in range(repeat):
        start = time.perf_counter()
        direct(formatted, **generation)
        timings["pipeline"].append(len(raw) * new_tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        answers = served.predict(pd.DataFrame({"prompt": raw}))
        seconds = time.perf_counter() - start
        # min_new_tokens: every answer is new_tokens long (MLflow's count adds the special tokens)
        assert all(a["usage"]["completion_tokens"] >= new_tokens for a in answers), answers[0]["usage"]
        timings["pyfunc"].append(len(raw) * new_tokens / seconds)
    return {name: statistics.median(values) for name, values in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=640)
    parser.add_argument("--validation-rows", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data = rows(args.train_rows, args.validation_rows)
    with tempfile.TemporaryDirectory(prefix="bench-generation-", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        trained = {v: train_once(data, v, root / v) for v in ("naive", "project")}
        served = serving(data, args.prompts, args.new_tokens, args.repeat, root)
    print(f"{'variant':<10}{'tokens/s':>10}{'train s':>9}{'val loss':>10}")
    for variant, r in trained.items():
        print(f"{variant:<10}{r['tokens_per_s']:>10.0f}{r['train_s']:>9.1f}{r['val_loss']:>10.4f}")
    print(f"generated tokens/s: pipeline {served['pipeline']:.1f}, pyfunc {served['pyfunc']:.1f}")
    figures = {
        "finetune_tokens_per_s_over_naive": trained["project"]["tokens_per_s"]
        / trained["naive"]["tokens_per_s"],
        "val_loss_gap": trained["project"]["val_loss"] - trained["naive"]["val_loss"],
        "pyfunc_tokens_per_s_over_pipeline": served["pyfunc"] / served["pipeline"],
        "finetune_tokens_per_s": trained["project"]["tokens_per_s"],
        "naive_tokens_per_s": trained["naive"]["tokens_per_s"],
        "pipeline_tokens_per_s": served["pipeline"],
        "pyfunc_tokens_per_s": served["pyfunc"],
    }
    print()
    for figure, value in figures.items():
        target, better = TARGETS.get(figure, (None, "higher"))
        unit = "ratio" if "over" in figure else "loss" if "loss" in figure else "tokens/s"
        line = {"benchmark": "generation_speed", "figure": figure, "value": round(value, 4),
                "target": target, "better": better, "unit": unit}  # fmt: skip
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
