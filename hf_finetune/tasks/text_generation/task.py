"""The text-generation task as the steps see it (``tasks.base.Task``), with its own settings.

Everything particular to fine-tuning a causal language model on prompt/completion rows is
reached from here: prepare's rows (``prompt_column``, ``completion_column``) and the
``prompt_template`` around each prompt; tokens with EOS ending every completion and the loss on
the completion only (``causal``); the gate's metric, bits per UTF-8 byte of the completion (lower
is better, comparable across tokenizers), against the base model on the same rows
(``evaluation``); MLflow's ``llm/v1/completions`` interface for the logged model (OpenAI-style
``prompt`` / ``max_tokens`` / ``temperature`` / ``stop``, the template saved with the model); and
the ``completion`` column ``predict`` writes.
"""

from __future__ import annotations

import dataclasses
import math
import string
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from hf_finetune.chain import EVALUATE, LOG_MODEL, PERSIST, PREDICT, PREPARE, TOKENIZE
from hf_finetune.corpus import CleanStats
from hf_finetune.errors import UserError
from hf_finetune.lora import new_modules, with_lora
from hf_finetune.settings import EVERYWHERE, STEP_PARAM, Settings, setting
from hf_finetune.tags import PROMPT_TEMPLATE_TAG
from hf_finetune.tasks.base import Evaluated, Evaluation, Example, Scorer, Task, TrainingParts
from hf_finetune.tasks.text_generation import evaluation
from hf_finetune.tasks.text_generation.causal import (
    CompletionCollator,
    align_special_ids,
    causal_config,
    completion_nats,
    encode_rows,
    load_causal,
    merge_verified,
    needs_decoder_flag,
    to_features,
    with_special_tokens,
)

NAME = "text-generation"
DEFAULT_TEMPLATE = "Is this SMS message spam or ham?\nMessage: {prompt}\nAnswer:"
MAX_TEMPLATE_CHARS = 4000  # it travels as a tag (MLflow keeps tag values up to 8000 characters)
LABEL_ROWS = 20  # completions that are at most MAX_LABELS values, each this often: a stratified split


def template_fields(template: str) -> list[str]:
    """The ``{fields}`` of a template (ValueError for a lone brace)."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]


def check_template(template: str) -> None:
    """One ``{prompt}`` (where the message goes) and no other field: what MLflow accepts too."""
    try:
        fields = template_fields(template)
    except ValueError:
        fields = ["?"]
    if fields != ["prompt"]:
        raise UserError(
            f"prompt_template {template[:60]!r} must hold {{prompt}} once, where the message goes, "
            "and no other {field}: write a literal brace as {{ or }}"
        )
    if len(template) > MAX_TEMPLATE_CHARS:
        raise UserError(f"prompt_template has {len(template)} characters: keep it under {MAX_TEMPLATE_CHARS}")


# ----------------------------------------------------------------------------- the task's settings
@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """The settings of text generation alone (``config.Config`` has them beside the shared)."""

    prompt_column: str = setting(
        "text",
        "the column that holds the prompts (the bundled SMS file: text)",
        (PREPARE,),
        EVERYWHERE,
        after="label_column",
    )
    completion_column: str = setting(
        "label",
        "the column that holds the completions (the bundled SMS file: label, so ` spam` / ` ham`)",
        (PREPARE,),
        EVERYWHERE,
        after="prompt_column",
    )
    prompt_template: str = setting(
        DEFAULT_TEMPLATE,
        "the text around each prompt, with one {prompt} where it goes; saved with the model, so "
        "callers send the raw prompt",
        (PREPARE, TOKENIZE),
        EVERYWHERE,
        after="completion_column",
    )
    max_new_tokens: int = setting(
        8,
        "tokens a generation may add (evaluate, the logged model's default, predict)",
        (EVALUATE, LOG_MODEL, PERSIST, PREDICT),
        STEP_PARAM,
        after="probe_data",
    )

    def __post_init__(self) -> None:
        check_template(self.prompt_template)
        if not self.prompt_column or not self.completion_column:
            raise UserError("prompt_column and completion_column must not be empty")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        best = getattr(self, "best_model_metric", "loss")
        if best not in ("loss", "last"):
            raise UserError(
                f"best_model_metric {best} is a classifier's: a text-generation fine-tune keeps the "
                "epoch of the best validation loss (loss) or the last one (last)"
            )


def own(cfg: Settings) -> GenerationSettings:
    """``cfg``'s text-generation settings (``config.Config`` has every task's)."""
    if not isinstance(cfg, GenerationSettings):
        raise TypeError(f"{type(cfg).__name__} has no text-generation settings")
    return cfg


def clean_pairs(
    df: pd.DataFrame, prompt_column: str, completion_column: str
) -> tuple[pd.DataFrame, CleanStats]:
    """``prompt`` (stripped) and ``completion`` (as given) columns; empty prompts and repeated
    prompts dropped; an empty completion is an error (every prompt needs its answer)."""
    for column, flag in ((prompt_column, "prompt_column"), (completion_column, "completion_column")):
        if column not in df.columns:
            raise UserError(
                f"column {column!r} not found; the data has columns "
                f"{', '.join(map(str, df.columns))}: set --{flag}"
            )
    for column in (prompt_column, completion_column):
        values = df[column]
        wrong = values[values.notna() & ~values.map(lambda v: isinstance(v, (str, int, float)))]
        if len(wrong):
            raise UserError(
                f"column {column!r} should hold text but row {wrong.index[0]} holds "
                f"{type(wrong.iloc[0]).__name__}: fix the file or choose another column"
            )
    prompt = df[prompt_column].where(df[prompt_column].notna(), "").astype(str).str.strip()
    completion = df[completion_column].where(df[completion_column].notna(), "").astype(str)
    empty_completion = completion.str.strip() == ""
    if empty_completion.any():
        row = int(np.flatnonzero(empty_completion.to_numpy())[0])
        raise UserError(
            f"row {row} ({prompt.iloc[row][:40]!r}) has an empty completion in column "
            f"{completion_column!r} ({int(empty_completion.sum())} such rows): every prompt needs its "
            "completion; fix or remove those rows"
        )
    empty = prompt == ""
    out = pd.DataFrame({"prompt": prompt[~empty], "completion": completion[~empty]})
    duplicated = out["prompt"].duplicated(keep="first")
    conflicts = int((out.groupby("prompt")["completion"].nunique() > 1).sum())
    out = out[~duplicated].reset_index(drop=True)
    if out.empty:
        raise UserError(f"no usable rows: every prompt in column {prompt_column!r} is empty")
    stats = CleanStats(len(df), 0, int(empty.sum()), int(duplicated.sum()), conflicts, len(out))
    return out, stats


# ----------------------------------------------------------------------------- the task
class TextGeneration(Task):
    name = NAME
    pipeline_task = "text-generation"
    mlflow_task = "llm/v1/completions"
    settings = GenerationSettings
    registered_model = "sms-spam-generator"
    row_key = "prompt"
    target = "completion"
    floor_name = "base_bits_per_byte"  # a first version must beat its base model on the same rows
    gate_metric = "bits_per_byte"
    higher_is_better = False
    validation_metric, validation_higher_is_better = "loss", False  # finetune keeps no logits
    _bits = ("test_bits_per_byte", "base_bits_per_byte")  # the fine-tuned model beside its base
    version_metrics = (*_bits, "test_perplexity", "test_exact_match", "test_f1")
    headline_metrics = (*_bits, "prior_bits_per_byte", "test_exact_match", "test_f1", "classical_f1")
    metric_names = ("bits_per_byte", "exact_match", "accuracy", "precision", "recall", "f1")
    baselines: ClassVar[dict[str, str]] = {
        "test": "this model",
        "base": "base model, before fine-tuning",
        "prior": "label prior of the train split",
        "classical": "TF-IDF + linear SVM (classical baseline)",
    }
    quality_curves = ()
    figures: ClassVar[dict[str, str]] = {}
    describes = "A causal language model"  # the model card's first words
    # the card's call of the loaded model
    usage = (
        'model.predict({"prompt": "Your parcel is held: pay the fee at the link", "max_tokens": 8})'
        '  # OpenAI-style: [0]["choices"][0]["text"]'
    )
    lora_task_type = "CAUSAL_LM"

    def clean(self, df: pd.DataFrame, cfg: Settings) -> tuple[pd.DataFrame, CleanStats]:
        return clean_pairs(df, own(cfg).prompt_column, own(cfg).completion_column)

    def stratify_by(self, frame: pd.DataFrame) -> str | None:
        """Completions that are a few labels, each on enough rows, keep their shares in every split."""
        counts = frame["completion"].value_counts()
        few = len(counts) <= evaluation.MAX_LABELS and int(counts.min()) >= LABEL_ROWS
        return "completion" if few else None

    def digest_columns(self) -> tuple[str, str]:
        return ("prompt", "completion")

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        return with_special_tokens(tokenizer)

    def lineage(self, cfg: Settings) -> dict[str, str]:
        return {PROMPT_TEMPLATE_TAG: own(cfg).prompt_template}

    def label_mapping(self, frames: dict[str, pd.DataFrame]) -> dict[str, int]:
        return {}  # no label ids: the completion is text

    def encode(
        self, frame: pd.DataFrame, tokenizer: Any, cfg: Settings, label2id: dict[str, int]
    ) -> pd.DataFrame:
        encoded, _ = encode_rows(frame, tokenizer, cfg.max_length, own(cfg).prompt_template)
        return encoded

    def model_for_training(self, resolved: str, label2id: dict[str, int], cfg: Settings) -> Any:
        """The base model as a causal LM (weights it lacks, a new LM head's, seeded from
        ``cfg.seed``), with a LoRA adapter when ``peft`` asks, those new weights training too."""
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

        set_seed(cfg.seed)
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            resolved, config=causal_config(resolved), output_loading_info=True
        )
        model, loading = loaded
        align_special_ids(model, with_special_tokens(AutoTokenizer.from_pretrained(resolved)))
        if cfg.peft != "lora":
            return model
        return with_lora(model, cfg, self.lora_task_type, new_modules(model, set(loading["missing_keys"])))

    def training_parts(
        self, frames: dict[str, pd.DataFrame], label2id: dict[str, int], tokenizer: Any, cfg: Settings
    ) -> TrainingParts:
        """Rows padded per batch; the loss on completion tokens (labels -100 elsewhere); per-epoch
        validation loss only (no logits kept: a vocabulary's worth per token)."""
        validation = frames["validation"]
        order = np.argsort(validation["input_ids"].map(len).to_numpy(), kind="stable")
        return TrainingParts(
            train=to_features(frames["train"]),
            validation=to_features(validation.iloc[order].reset_index(drop=True)),
            collator=CompletionCollator(with_special_tokens(tokenizer).pad_token_id),
            compute_metrics=None,
            arguments={"prediction_loss_only": True},
        )

    def evaluate(self, job: Evaluation, cfg: Settings) -> Evaluated:
        return evaluation.evaluate(job, cfg, own(cfg).max_new_tokens)

    def load_trained(
        self, folder: Path, base_model: str, id2label: dict[int, str], revision: str | None = None
    ) -> Any:
        return load_causal(folder, base_model, revision)

    def model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def example(
        self, predictions: pd.DataFrame, cfg: Settings, max_length: int, size: int, lineage: dict[str, str]
    ) -> Example:
        """A few test prompts (each label first, where completions are a few labels), the
        template, and greedy generation of up to ``max_new_tokens`` as the model's defaults.
        MLflow sets the ``llm/v1/completions`` signature itself."""
        firsts = predictions.groupby("completion", sort=True).head(1)
        if len(firsts) > size:  # free text: the first rows
            firsts = firsts.head(0)
        chosen = pd.concat([firsts, predictions.drop(firsts.index)]).head(max(size, len(firsts)))
        prompts = chosen["prompt"].tolist()
        generation = {"max_new_tokens": own(cfg).max_new_tokens, "do_sample": False}
        return Example(
            prompts,
            [str(p) for p in chosen["prediction"]],
            None,
            generation,
            {},
            input_example={"prompt": prompts[0]},
            options={"prompt_template": lineage.get(PROMPT_TEMPLATE_TAG) or "{prompt}"},
        )

    def merge_verified(
        self,
        adapter: Path,
        base: Path,
        id2label: dict[int, str],
        inputs: list[str],
        out: Path,
        cfg: Settings,
        tags: dict[str, str],
    ) -> Path:
        """The merge generates exactly what the adapter did, on the inputs as served: inside the
        version's prompt template, up to ``max_new_tokens``."""
        template = tags.get(PROMPT_TEMPLATE_TAG) or "{prompt}"
        prompts = [template.format(prompt=text) for text in inputs]
        return merge_verified(adapter, base, prompts, own(cfg).max_new_tokens, out)

    def served_outputs(self, model: Any, inputs: list[str]) -> list[str]:
        answered = model.predict(pd.DataFrame({"prompt": inputs}))
        return [str(choice_text(a)).strip() for a in answered]

    def reference_problem(self, resolved: str) -> str:
        if needs_decoder_flag(resolved):
            return (
                "its config on the hub lacks is_decoder=True, which the causal LM trained on it needs "
                "(an encoder such as the bundled stand-in): loaded from the hub it would be another "
                "model; use save_mode full or checkpoint"
            )
        return ""

    def gate_floor(self, cfg: Settings, metrics: dict[str, float]) -> float:
        """The base model's bits per byte on the same rows: a ceiling the fine-tune must be below
        (none recorded: nothing passes)."""
        return float(metrics.get("base_bits_per_byte", -math.inf))

    def champion_scores(
        self, model_uri: str, version_tags: dict[str, str], rows: pd.DataFrame, cfg: Settings
    ) -> list[Any]:
        """The champion's bits and bytes per row: its own model and tokenizer, its own template."""
        import mlflow

        parts = mlflow.transformers.load_model(model_uri, return_type="components")
        model, tokenizer = parts["model"], with_special_tokens(parts["tokenizer"])
        template = version_tags.get(PROMPT_TEMPLATE_TAG) or "{prompt}"
        longest = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        tokenize_run = version_tags.get(f"run.{TOKENIZE}")
        if tokenize_run:  # as the champion was evaluated: its own max_length
            longest = int(mlflow.MlflowClient().get_run(tokenize_run).data.params["config.max_length"])
        encoded, dropped = encode_rows(rows[["prompt", "completion"]], tokenizer, longest, template)
        if dropped:
            raise RuntimeError(f"{dropped} of the rows do not fit the champion's max_length {longest}")
        nats = completion_nats(model, encoded, tokenizer.pad_token_id, "cpu")
        return list(zip(nats / math.log(2), encoded["completion_bytes"], strict=True))

    def compare(
        self, rows: pd.DataFrame, champion: list[Any], cfg: Settings
    ) -> tuple[float, float, float, float]:
        theirs = np.asarray(champion, dtype=float).reshape(-1, 2)
        return evaluation.paired_bits_per_byte(
            rows["bits"].to_numpy(float), theirs[:, 0], rows["bytes"].to_numpy(float), theirs[:, 1]
        )

    def scorer(self, model: Any, cfg: Settings) -> Scorer:
        return CompletionScorer(own(cfg).max_new_tokens)


def choice_text(answer: Any) -> str:
    """The text of an ``llm/v1/completions`` answer (OpenAI's shape: ``choices[0].text``)."""
    return str(answer["choices"][0]["text"])


class CompletionScorer(Scorer):
    """``completion``: the model's greedy completion of each prompt (its template applied)."""

    outputs = ("completion",)
    counted = None

    def __init__(self, max_new_tokens: int) -> None:
        self.max_new_tokens = max_new_tokens

    def predict(self, model: Any, texts: list[str], batch_size: int) -> pd.DataFrame:
        asked = pd.DataFrame({"prompt": texts, "max_tokens": [self.max_new_tokens] * len(texts)})
        return pd.DataFrame({"completion": [choice_text(a).strip() for a in model.predict(asked)]})

    def columns(self, predicted: pd.DataFrame) -> dict[str, Any]:
        return {"completion": predicted["completion"].astype(str).to_numpy()}

    def spark_input(self, text: Any) -> Any:
        """The prompt and ``max_tokens`` by name (columns of the completions schema left out stay
        unset, as in a request that does not send them)."""
        from pyspark.sql import functions as F

        return F.struct(text.alias("prompt"), F.lit(self.max_new_tokens).cast("long").alias("max_tokens"))

    def spark_columns(self, prediction: Any) -> list[Any]:
        from pyspark.sql import functions as F

        text = F.col(f"{prediction}.choices").getItem(0).getField("text")
        return [F.trim(text).alias("completion")]
