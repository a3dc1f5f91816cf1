"""Text generation's evaluation: the fine-tuned causal LM on the test split beside its baselines.

On the same test rows: the completion's bits per UTF-8 byte (EOS included) of the fine-tuned
model and of the base model before fine-tuning (its new LM-head weights seeded as finetune seeds
them), the perplexity per completion token, and greedy generations with their exact-match rate
(stripped, lower-cased). Where the completions are a few labels (the bundled SMS example: `` spam``
/ `` ham``) also the bits per byte of the label prior of the train split, and accuracy,
precision, recall and F1 of the generated label beside the classical model on the same split.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from hf_finetune import chain, logs, paired
from hf_finetune.settings import Settings
from hf_finetune.tasks.base import Evaluated, Evaluation
from hf_finetune.tasks.text_classification import classical
from hf_finetune.tasks.text_classification.measures import classification_metrics, prefixed
from hf_finetune.tasks.text_generation.causal import (
    align_special_ids,
    bits_per_byte,
    causal_config,
    completion_nats,
    generate,
    load_causal,
    normalised,
    with_special_tokens,
)

log = logs.logger(chain.EVALUATE)
MAX_LABELS = 20  # completions with at most this many distinct values are labels (a prior, F1)
SAMPLES_FILE = "generations.csv"


def few_labels(completions: pd.Series) -> list[str] | None:
    """The distinct normalised completions, sorted, if they are few enough to be labels."""
    values = sorted({normalised(c) for c in completions})
    return values if len(values) <= MAX_LABELS else None


def label_metrics(
    truth: list[str], said: list[str], labels: list[str], positive_label: str
) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of generated labels, as for a classifier: of
    ``positive_label`` for two labels (a generation that is no label is not the positive one),
    else macro over the labels. Accuracy counts a generation that is no label as wrong."""
    accuracy = float(np.mean([t == s for t, s in zip(truth, said, strict=True)]))
    if len(labels) == 2 and positive_label in labels:
        other = next(label for label in labels if label != positive_label)
        said = [s if s == positive_label else other for s in said]  # not the positive label
    return classification_metrics(truth, said, labels, positive_label) | {"accuracy": accuracy}


def prior_bits(train: pd.Series, test: pd.Series) -> float | None:
    """Bits per byte of ``test``'s completions under the train split's frequency of each whole
    completion (the label prior): None if a test completion never occurs in train."""
    counts = train.value_counts()
    if not set(test) <= set(counts.index):
        return None
    probability = test.map(counts / counts.sum()).to_numpy(dtype=float)
    n_bytes = test.map(lambda c: len(str(c).encode("utf-8"))).to_numpy()
    return float(-np.log2(probability).sum() / max(1, n_bytes.sum()))


def paired_bits_per_byte(
    bits: np.ndarray,
    champion_bits: np.ndarray,
    n_bytes: np.ndarray,
    champion_bytes: np.ndarray | None = None,
    resamples: int = paired.RESAMPLES,
    seed: int = paired.SEED,
) -> tuple[float, float, float, float]:
    """(candidate, champion, low, high): bits per byte of both on all rows, and the central
    interval of candidate - champion over the seeded bootstrap of the rows (``paired``: the same
    resampled rows for both). Each model's bytes are its own scored strings (the same completion,
    joined to its own prompt template)."""
    theirs = n_bytes if champion_bytes is None else champion_bytes
    weights = paired.row_weights(len(bits), resamples, seed)
    ours_w = (weights @ bits) / np.maximum(weights @ n_bytes, 1)
    theirs_w = (weights @ champion_bits) / np.maximum(weights @ theirs, 1)
    low, high = paired.central_interval(ours_w - theirs_w)
    return (
        float(bits.sum() / max(1, n_bytes.sum())),
        float(champion_bits.sum() / max(1, theirs.sum())),
        low,
        high,
    )


def evaluate(job: Evaluation, cfg: Settings, max_new_tokens: int) -> Evaluated:
    """The fine-tuned model and the base model on the test rows; generations, exact match, and
    for a few labels the prior and the classical model on the same rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    frames, test = job.frames, job.frames["test"]
    tokenizer = with_special_tokens(AutoTokenizer.from_pretrained(job.checkpoint))
    model = load_causal(job.checkpoint, job.base_model)  # a model or an adapter
    align_special_ids(model, tokenizer)
    n_bytes = test["completion_bytes"].to_numpy()
    nats = completion_nats(model, test, tokenizer.pad_token_id, job.device)
    tokens = int(
        sum(len(ids) - int(s) for ids, s in zip(test["input_ids"], test["completion_start"], strict=True))
    )
    starts = zip(test["input_ids"], test["completion_start"], strict=True)
    prompt_ids = [np.asarray(ids)[: int(start)].tolist() for ids, start in starts]  # as scored
    generated = generate(model, tokenizer, [], max_new_tokens, cfg.eval_batch_size, job.device, prompt_ids)
    metrics = {
        "test_bits_per_byte": round(bits_per_byte(nats, n_bytes), 6),
        "test_perplexity": round(math.exp(nats.sum() / max(1, tokens)), 6),
        "test_exact_match": round(
            float(
                np.mean(
                    [
                        normalised(g) == normalised(c)
                        for g, c in zip(generated, test["completion"], strict=True)
                    ]
                )
            ),
            6,
        ),
        "test_completion_tokens": float(tokens),
    }
    del model
    # The base model before fine-tuning, on the same rows: a new LM head seeded as finetune seeds it.
    set_seed(cfg.seed)
    base = AutoModelForCausalLM.from_pretrained(job.base_model, config=causal_config(job.base_model))
    align_special_ids(base, tokenizer)
    base_nats = completion_nats(base, test, tokenizer.pad_token_id, job.device)
    metrics["base_bits_per_byte"] = round(bits_per_byte(base_nats, n_bytes), 6)
    del base

    scored = pd.DataFrame(
        {
            "prompt": test["prompt"].to_numpy(),
            "completion": test["completion"].to_numpy(),  # as given: each model joins it to its template
            "prediction": [g.strip() for g in generated],
            "bits": nats / math.log(2),
            "bytes": n_bytes,
            "base_bits": base_nats / math.log(2),
        }
    )
    labels = few_labels(frames["train"]["completion"])  # prior and bytes: as the model saw them
    params: dict[str, str] = {}
    if labels is not None and set(map(normalised, test["completion"])) <= set(labels):
        prior = prior_bits(frames["train"]["completion_text"], test["completion_text"])
        if prior is not None:
            metrics["prior_bits_per_byte"] = round(prior, 6)
        truth = [normalised(c) for c in test["completion"]]
        said = [normalised(g) for g in generated]
        metrics |= prefixed("test", label_metrics(truth, said, labels, cfg.positive_label))
        svm, svm_c = classical.fit(
            frames["train"]["prompt"].tolist(),
            [normalised(c) for c in frames["train"]["completion"]],
            frames["validation"]["prompt"].tolist(),
            [normalised(c) for c in frames["validation"]["completion"]],
            cfg.positive_label,
        )
        classical_said = svm.predict(test["prompt"].tolist())
        metrics |= prefixed("classical", label_metrics(truth, classical_said, labels, cfg.positive_label))
        params["classical_c"] = str(svm_c)
    scored.assign(bits_per_byte=scored["bits"] / scored["bytes"].clip(lower=1)).to_csv(
        job.out / SAMPLES_FILE, index=False
    )
    return Evaluated(metrics, params, scored)
