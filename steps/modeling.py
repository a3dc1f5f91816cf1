"""Model-side helpers shared by finetune and evaluate: devices, metrics, batched prediction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steps.errors import UserError


def resolve_device(requested: str, cuda: bool, mps: bool) -> str:
    """The device to train on. Asking for one that is not there is an error, never a fall-back."""
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda" and not cuda:
        raise UserError(
            "device cuda requested but torch sees no CUDA GPU: use --device cpu "
            "(or profile local), or install a CUDA build of torch on a GPU machine"
        )
    if requested == "mps" and not mps:
        raise UserError(
            "device mps requested but torch sees no Apple MPS device: use --device cpu "
            "(or profile local) off Apple silicon"
        )
    return requested


def available_device(requested: str) -> str:
    if requested == "cpu":  # always there: importing torch to ask would cost seconds
        return "cpu"
    import torch

    return resolve_device(requested, torch.cuda.is_available(), torch.backends.mps.is_available())


def check_precision(precision: str, device: str, bf16_on_gpu: bool | None = None) -> None:
    """Refuse a precision the device cannot train in (``bf16_on_gpu``: None asks torch)."""
    if precision == "fp16" and device == "cpu":
        raise UserError("precision fp16 is not supported on cpu: use precision fp32 (or bf16)")
    if precision == "bf16" and device == "cuda":
        if bf16_on_gpu is None:
            import torch

            bf16_on_gpu = torch.cuda.is_bf16_supported()
        if not bf16_on_gpu:
            raise UserError(
                "precision bf16 needs an Ampere or newer GPU and this one has none: use precision fp16"
            )


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], positive_label: str
) -> dict[str, float]:
    """Accuracy, precision, recall and F1: of ``positive_label`` for two classes, else macro."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    binary = len(labels) == 2 and positive_label in labels
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true,
        y_pred,
        labels=list(labels),
        average="binary" if binary else "macro",
        pos_label=positive_label if binary else 1,
        zero_division=0,
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


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


# ----------------------------------------------------------------------------- LoRA adapters
ADAPTER_CONFIG = "adapter_config.json"


def linear_module_names(model: Any) -> list[str]:
    """The distinct last names of the model's linear layers: what LoRA ``target_modules`` match."""
    import torch

    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
    )


def is_adapter(folder: Path) -> bool:
    """A PEFT adapter folder (adapter weights and config), as opposed to a whole model."""
    return (folder / ADAPTER_CONFIG).is_file()


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


def save_merged(model: Any, out: Path) -> None:
    """Save a PEFT model with its LoRA adapter folded into the base weights: an ordinary model
    folder. The one place the project merges an adapter (finetune's checkpoint, persist, and
    ``merge_adapter``)."""
    model.merge_and_unload().save_pretrained(out)


def merge_adapter(adapter: Path, base_model: str, id2label: dict[int, str], out: Path) -> Path:
    """Fold a LoRA adapter into its base model's weights: one ordinary, self-contained model
    folder (weights, config with the labels, tokenizer) that predicts what base + adapter did."""
    from transformers import AutoTokenizer

    save_merged(load_classifier(adapter, base_model, id2label), out)
    AutoTokenizer.from_pretrained(
        adapter if (adapter / "tokenizer_config.json").is_file() else base_model
    ).save_pretrained(out)
    return out


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
