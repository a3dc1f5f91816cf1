"""The causal language model: prompts and completions as token ids, the model loaded, scored and
asked to generate.

A row is the formatted prompt (``prompt_template`` around the message, tokenized as the
``text-generation`` pipeline tokenizes it at inference, special tokens included) followed by the
completion's tokens and EOS. Only the completion (EOS included) is learnt and scored: its
negative log-likelihood, in bits per UTF-8 byte of the completion text, is what the task
measures, so that models with different tokenizers compare on the same strings.

An encoder checkpoint (BERT and its kin) loads as a causal LM with ``is_decoder=True``: its
attention becomes causal and ``AutoModelForCausalLM`` adds an LM head whose output layer is tied
to the embeddings. The bundled all-MiniLM-L6-v2 is used that way as an offline stand-in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hf_finetune.errors import UserError
from hf_finetune.lora import is_adapter, save_merged

IGNORE = -100  # the label id the loss skips: prompt and padding positions
# encoder architectures that transformers can run as a decoder (``is_decoder=True``)
ENCODERS_AS_DECODERS = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "bert-generation")
LOGITS_PER_BATCH = 2**26  # scoring: rows x tokens x vocabulary per forward pass (256 MB of float32)


def causal_config(source: str | Path, revision: str | None = None) -> Any:
    """The model's config as a causal LM: an encoder's gets ``is_decoder=True``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, revision=revision)
    if config.model_type in ENCODERS_AS_DECODERS and not getattr(config, "is_decoder", False):
        config.is_decoder = True
    return config


def needs_decoder_flag(source: str | Path, revision: str | None = None) -> bool:
    """An encoder whose own config lacks ``is_decoder``: loaded as its hub repository has it, it
    would not be the causal model trained on it."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, revision=revision)
    return config.model_type in ENCODERS_AS_DECODERS and not getattr(config, "is_decoder", False)


def with_special_tokens(tokenizer: Any) -> Any:
    """The tokenizer with an EOS (a BERT tokenizer's ``[SEP]`` where it has none) and a pad token
    (EOS where it has none, as for GPT-2): every completion ends with EOS, batches are padded."""
    if tokenizer.eos_token is None:
        if tokenizer.sep_token is None:
            raise UserError(
                f"the tokenizer {type(tokenizer).__name__} has no end-of-sequence token (eos_token) nor "
                "a separator to use as one: choose a base model whose tokenizer has one"
            )
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def joined(prompt_text: str, completion: str) -> str:
    """The completion as it follows the formatted prompt: after one space unless either side
    has white space at the join (``Answer:`` + ``spam`` -> `` spam``)."""
    if not completion or completion[0].isspace() or not prompt_text or prompt_text[-1].isspace():
        return completion
    return " " + completion


def fit_row(prompt: list[int], completion: list[int], max_length: int, lead: int) -> list[int] | None:
    """The prompt's ids cut to fit ``max_length`` beside the whole completion: its first ``lead``
    (special) tokens kept, then its end, nearest the completion. None if even one prompt token
    beyond them would not fit."""
    room = max_length - len(completion)
    if len(prompt) <= room:
        return prompt
    if room < lead + 1:
        return None
    return prompt[:lead] + prompt[len(prompt) - (room - lead) :]


def completion_ids(prompt: list[int], whole: list[int], alone: list[int], special: set[int]) -> list[int]:
    """The completion's token ids as they follow the prompt's: the tail of prompt + completion
    tokenized together where the prompt's ids begin it (BPE and SentencePiece tokenizers: no
    spurious word-start token), else the completion tokenized alone (a tokenizer that closes the
    prompt with a special token, as BERT's ``[SEP]``, which generation then continues after)."""
    if whole[: len(prompt)] != prompt:
        return alone
    tail = whole[len(prompt) :]
    while tail and tail[-1] in special:  # an end token the tokenizer adds itself; EOS is ours
        tail = tail[:-1]
    return tail or alone


def encode_rows(
    frame: pd.DataFrame, tokenizer: Any, max_length: int, template: str
) -> tuple[pd.DataFrame, int]:
    """Token ids of formatted prompt + completion + EOS, not padded, and where the completion
    starts; and how many rows were dropped because their completion alone does not fit.
    ``completion`` stays as given; ``completion_text`` is it as it follows the formatted prompt."""
    texts = [template.format(prompt=p) for p in frame["prompt"]]
    completions = [joined(t, c) for t, c in zip(texts, frame["completion"], strict=True)]
    prompts = tokenizer(texts, add_special_tokens=True)["input_ids"]
    wholes = tokenizer([t + c for t, c in zip(texts, completions, strict=True)], add_special_tokens=True)
    alone = tokenizer(completions, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    rows: list[dict[str, Any]] = []
    dropped = 0
    for raw, given, text, completion, p, whole, c in zip(
        frame["prompt"],
        frame["completion"],
        texts,
        completions,
        prompts,
        wholes["input_ids"],
        alone,
        strict=True,
    ):
        ids_c = [*completion_ids(p, whole, c, special), tokenizer.eos_token_id]
        lead = 1 if p and p[0] in special else 0
        ids_p = fit_row(p, ids_c, max_length, lead)
        if ids_p is None:
            dropped += 1
            continue
        ids = [*ids_p, *ids_c]
        rows.append(
            {
                "prompt": raw,
                "completion": given,
                "completion_text": completion,
                "prompt_text": text,
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "completion_start": len(ids_p),
                "completion_bytes": len(completion.encode("utf-8")),
            }
        )
    columns = ["prompt", "completion", "completion_text", "prompt_text", "input_ids", "attention_mask"]
    return pd.DataFrame(rows, columns=[*columns, "completion_start", "completion_bytes"]), dropped


def to_features(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as the Trainer takes them: labels are the ids, the prompt's positions ignored."""
    features = []
    for ids, start in zip(frame["input_ids"], frame["completion_start"], strict=True):
        ids = np.asarray(ids).tolist()
        labels = [IGNORE] * int(start) + ids[int(start) :]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return features


class CompletionCollator:
    """Pads a batch to its longest row, on the right: pad ids, mask 0 and ignored labels."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)

        def padded(key: str, fill: int) -> Any:
            return torch.tensor([list(f[key]) + [fill] * (longest - len(f[key])) for f in features])

        batch = {"input_ids": padded("input_ids", self.pad), "attention_mask": padded("attention_mask", 0)}
        if "labels" in features[0]:
            batch["labels"] = padded("labels", IGNORE)
        return batch


def load_causal(folder: str | Path, base_model: str | None = None, revision: str | None = None) -> Any:
    """A fine-tuned causal LM from ``folder``: a whole model, or a LoRA adapter on ``base_model``."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not is_adapter(folder):
        return AutoModelForCausalLM.from_pretrained(folder, config=causal_config(folder))
    from peft import PeftModel

    if base_model is None:
        raise ValueError(f"{folder} holds a LoRA adapter: its base model is needed")
    base = AutoModelForCausalLM.from_pretrained(
        base_model, config=causal_config(base_model, revision), revision=revision
    )
    return PeftModel.from_pretrained(base, folder)


def align_special_ids(model: Any, tokenizer: Any) -> None:
    """The model's EOS and pad ids are the tokenizer's (``with_special_tokens``), so generation
    stops where training taught it to, in the config saved with the model too."""
    for config in (model.config, model.generation_config):
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id


def completion_nats(model: Any, frame: pd.DataFrame, pad_token_id: int, device: str) -> np.ndarray:
    """Per row: the negative log-likelihood (nats) of the completion's tokens, EOS included,
    given the prompt. Rows are scored shortest first, right-padded, without autograd."""
    import torch

    lengths = frame["input_ids"].map(len).to_numpy()
    order = np.argsort(lengths, kind="stable")
    out = np.empty(len(frame), dtype=np.float64)
    model.to(device).eval()
    collate = CompletionCollator(pad_token_id)
    features = to_features(frame)
    tokens = max(1, LOGITS_PER_BATCH // int(model.config.vocab_size))
    start = 0
    with torch.inference_mode():
        while start < len(order):
            end = start + 1  # rows in length order: the batch pads to its last one
            while end < len(order) and (end + 1 - start) * int(lengths[order[end]]) <= tokens:
                end += 1
            idx = order[start:end]
            batch = {k: v.to(device) for k, v in collate([features[i] for i in idx]).items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1].float()
            targets = labels[:, 1:]
            mask = targets != IGNORE
            picked = torch.gather(
                torch.log_softmax(logits, dim=-1), 2, targets.clamp(min=0).unsqueeze(-1)
            ).squeeze(-1)
            out[idx] = (-(picked * mask).sum(dim=1)).double().cpu().numpy()
            start = end
    return out


def bits_per_byte(nats: np.ndarray, n_bytes: np.ndarray) -> float:
    """All rows' completion bits over all their UTF-8 bytes."""
    return float(nats.sum() / math.log(2) / max(1, int(n_bytes.sum())))


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    device: str,
    ids: list[list[int]] | None = None,
) -> list[str]:
    """Greedy completions of the formatted ``prompts`` (or of the prompts' token ``ids``, as
    tokenize made and cut them), in their order: batches of similar length, padded on the left
    (the position ids follow the mask), the prompt cut off, decoded."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    encoded = ids if ids is not None else tokenizer(prompts, add_special_tokens=True)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    out: list[str] = [""] * len(encoded)
    model.to(device).eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                generated = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new = generated[:, batch["input_ids"].shape[1] :]
                for i, ids in zip(idx, new, strict=True):
                    out[int(i)] = tokenizer.decode(ids, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def normalised(text: str) -> str:
    """A completion as exact match compares it: stripped and lower-cased."""
    return str(text).strip().lower()


def merge_verified(adapter: Path, base: Path, prompts: list[str], max_new_tokens: int, out: Path) -> Path:
    """Fold ``adapter`` into ``base`` at ``out`` and check that the merged model, as written,
    generates exactly what base + adapter did for the formatted ``prompts`` (greedy).

    MLflow's own ``persist_pretrained_model`` writes LoRA-keyed weights that reload silently
    wrong (mlflow issue #23761): a merged model is an ordinary one, and this check proves it.
    """
    from transformers import AutoTokenizer

    # an adapter is trained on its base's tokens (MLflow keeps no tokenizer beside one)
    source = adapter if (adapter / "tokenizer_config.json").is_file() else base
    tokenizer = with_special_tokens(AutoTokenizer.from_pretrained(source))
    model = load_causal(adapter, str(base))
    before = generate(model, tokenizer, prompts, max_new_tokens, 1, "cpu")
    save_merged(model, out)
    merged = load_causal(out)
    align_special_ids(merged, tokenizer)
    merged.config.save_pretrained(out)
    merged.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    after = generate(load_causal(out), tokenizer, prompts, max_new_tokens, 1, "cpu")
    if before != after:
        raise RuntimeError(f"the merged model generates {after}, the adapter {before}")
    return out
