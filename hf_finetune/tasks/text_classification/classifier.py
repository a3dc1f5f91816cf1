"""The sequence classifier: texts as token ids, the model loaded or merged, its probabilities.

A fine-tuned classifier is a whole model folder, or a LoRA adapter on its base model loaded with
the fine-tune's labels; ``merge_verified`` folds an adapter into whole weights and checks that
the merge predicts what the adapter did.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hf_finetune.lora import is_adapter, save_merged

MERGE_TOLERANCE = 1e-5  # largest difference in any class probability, adapter vs merged


def to_features(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a tokenized frame as the dicts the Trainer and the padding collator take."""
    return [
        {
            "input_ids": np.asarray(ids).tolist(),
            "attention_mask": np.asarray(mask).tolist(),
            "labels": int(label),
        }
        for ids, mask, label in zip(
            frame["input_ids"], frame["attention_mask"], frame["label_id"], strict=True
        )
    ]


def load_classifier(
    folder: Path,
    base_model: str | None = None,
    id2label: dict[int, str] | None = None,
    revision: str | None = None,
) -> Any:
    """A fine-tuned classifier from ``folder``: a whole model, or a LoRA adapter on ``base_model``
    (loaded with the fine-tune's labels, so the head's outputs keep their names)."""
    from transformers import AutoModelForSequenceClassification

    if not is_adapter(folder):
        return AutoModelForSequenceClassification.from_pretrained(folder)
    from peft import PeftModel

    if base_model is None or id2label is None:
        raise ValueError(f"{folder} holds a LoRA adapter: its base model and labels are needed")
    base = AutoModelForSequenceClassification.from_pretrained(
        base_model,
        num_labels=len(id2label),
        id2label=id2label,
        label2id={label: i for i, label in id2label.items()},
        revision=revision,
    )
    return PeftModel.from_pretrained(base, folder)


def tokenize_frame(
    df: pd.DataFrame, tokenizer: Any, max_length: int, label2id: dict[str, int]
) -> pd.DataFrame:
    """Token ids per text, truncated to ``max_length`` and not padded."""
    encoded = tokenizer(list(df["text"]), truncation=True, max_length=max_length, padding=False)
    return pd.DataFrame(
        {
            "text": df["text"].to_numpy(),
            "label": df["label"].to_numpy(),
            "label_id": [label2id[label] for label in df["label"]],
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
        }
    )


def merge_verified(adapter: Path, base: Path, id2label: dict[int, str], texts: list[str], out: Path) -> Path:
    """Fold ``adapter`` into ``base`` and check the merged model predicts what base + adapter did.

    MLflow's own ``persist_pretrained_model`` on a PEFT model writes LoRA-keyed weights that do
    not load as the model (mlflow issue #23761); a merge is an ordinary model, and this check
    makes sure of it on the input example before anything is written to the artifacts.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)  # an adapter is trained on its base's tokens
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")

    def probabilities(model: Any) -> Any:
        with torch.inference_mode():
            return torch.softmax(model.eval()(**batch).logits.float(), dim=-1)

    model = load_classifier(adapter, str(base), id2label)
    before = probabilities(model)
    save_merged(model, out)
    tokenizer.save_pretrained(out)
    del model
    after = probabilities(AutoModelForSequenceClassification.from_pretrained(out))  # as written
    gap = float((before - after).abs().max())
    if gap > MERGE_TOLERANCE:
        raise RuntimeError(f"the merged model's probabilities differ from the adapter's by {gap:.2e}")
    return out


def label_mapping(labels: Iterable[str]) -> dict[str, int]:
    """Sorted labels to ids: stable across runs whatever order the data came in."""
    return {label: i for i, label in enumerate(sorted(set(labels)))}


def predict_proba(
    model: Any, tokenizer: Any, frame: pd.DataFrame, batch_size: int, device: str
) -> np.ndarray:
    """Class probabilities for a tokenized frame, padded per batch, without autograd."""
    import torch
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    features = [{k: v for k, v in f.items() if k != "labels"} for f in to_features(frame)]
    # Sort by length so each batch pads to similar lengths; restore the order at the end.
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
    model.to(device).eval()
    out = np.empty((len(features), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([features[i] for i in idx]).items()}
            out[idx] = torch.softmax(model(**batch).logits.float(), dim=-1).cpu().numpy()
    return out


def by_length(frame: Any) -> Any:
    """A tokenized frame's rows, shortest first (a stable sort: equal lengths keep their order)."""
    order = np.argsort(frame["input_ids"].map(len).to_numpy(), kind="stable")
    return frame.iloc[order].reset_index(drop=True)
