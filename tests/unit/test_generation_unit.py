"""The text-generation task on tiny models: rows, tokens, loss mask, bits per byte, LoRA targets,
the merge check, the gate's paired comparison, settings and refusals. Nothing here trains for
more than a step or two; ``tests/e2e/test_generation.py`` runs the whole chain."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hf_finetune import hub, lora, paired
from hf_finetune.config import Config
from hf_finetune.corpus import data_digest, split
from hf_finetune.errors import UserError
from hf_finetune.profiles import load_config
from hf_finetune.registry import gate
from hf_finetune.settings import BUNDLED_BASE_MODEL
from hf_finetune.tasks import registry
from hf_finetune.tasks.text_generation import causal, evaluation
from hf_finetune.tasks.text_generation.task import DEFAULT_TEMPLATE, check_template, clean_pairs
from tests.recorded import bundled_tokenizer, tiny_decoder

GENERATION = registry.TASKS["text-generation"]
PROMPTS = ["WIN a free cruise, reply YES now", "see you at 7, bring the charger", "your parcel is held"]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def decoder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_decoder(request.param, tmp_path_factory.mktemp(request.param))


def frame(completions: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"prompt": PROMPTS[: len(completions)], "completion": completions})


# ----------------------------------------------------------------------------- prepare
def test_rows_become_prompt_and_completion_and_bad_rows_are_one_line() -> None:
    raw = pd.DataFrame({"q": ["  hi  ", "hi", "", "yo"], "a": ["spam", "ham", "ham", "ham"]})
    rows, stats = clean_pairs(raw, "q", "a")
    assert rows.to_dict("list") == {"prompt": ["hi", "yo"], "completion": ["spam", "ham"]}
    assert (stats.dropped_empty, stats.dropped_duplicate, stats.conflicting_duplicates) == (1, 1, 1)
    with pytest.raises(UserError, match=r"column 'answer' not found.*set --completion_column"):
        clean_pairs(raw, "q", "answer")
    with pytest.raises(UserError, match=r"row 1 .* empty completion .*1 such rows"):
        clean_pairs(pd.DataFrame({"q": ["a", "b"], "a": ["x", "  "]}), "q", "a")


@pytest.mark.parametrize(
    "template", ["no placeholder", "{prompt} and {other}", "{prompt} {", "{prompt}{prompt}"]
)
def test_a_template_without_exactly_one_prompt_field_is_refused(template: str) -> None:
    with pytest.raises(UserError, match=r"must hold \{prompt\} once"):
        check_template(template)
    with pytest.raises(UserError, match="prompt_template"):
        Config(task="text-generation", prompt_template=template)
    check_template("Q: {prompt}\nA {{literal braces}}:")


def test_the_digest_covers_prompt_and_completion_and_a_free_text_split_is_random() -> None:
    rows = pd.DataFrame(
        {"prompt": [f"p{i}" for i in range(100)], "completion": [f"c{i}" for i in range(100)]}
    )
    changed = rows.assign(completion=rows["completion"].where(rows.index != 5, "other"))
    assert data_digest(rows, GENERATION.digest_columns()) != data_digest(changed, GENERATION.digest_columns())
    assert GENERATION.stratify_by(rows) is None  # 100 different completions: not labels
    parts = split(rows, 0.1, 0.1, 42, None)
    assert sorted(len(p) for p in parts.values()) == [10, 10, 80]
    labelled = pd.DataFrame({"prompt": [f"p{i}" for i in range(100)], "completion": ["ham", "spam"] * 50})
    assert GENERATION.stratify_by(labelled) == "completion"
    assert all(
        (p["completion"] == "spam").mean() == 0.5
        for p in split(labelled, 0.1, 0.1, 42, "completion").values()
    )


# ----------------------------------------------------------------------------- tokenize
def test_eos_ends_every_completion_and_only_the_completion_is_learnt() -> None:
    tokenizer = bundled_tokenizer()
    rows = pd.DataFrame({"prompt": [PROMPTS[0], "ok"], "completion": ["spam", " ham"]})
    encoded, dropped = causal.encode_rows(rows, tokenizer, 64, DEFAULT_TEMPLATE)
    assert dropped == 0
    assert encoded["completion"].tolist() == ["spam", " ham"]  # as given
    assert encoded["completion_text"].tolist() == [" spam", " ham"]  # one space after "Answer:", not two
    for row, feature in zip(encoded.itertuples(), causal.to_features(encoded), strict=True):
        ids, start = list(row.input_ids), row.completion_start
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[start:-1]).strip() == row.completion.strip()
        assert ids[:start] == tokenizer(row.prompt_text)["input_ids"]  # as the pipeline tokenizes it
        assert feature["labels"][:start] == [causal.IGNORE] * start
        assert feature["labels"][start:] == ids[start:]
        assert row.completion_bytes == len(row.completion_text.encode("utf-8"))
    batch = causal.CompletionCollator(tokenizer.pad_token_id)(causal.to_features(encoded))
    shorter = int(np.argmin([len(i) for i in encoded["input_ids"]]))
    assert len(encoded["input_ids"][shorter]) < batch["input_ids"].shape[1]
    assert batch["labels"][shorter, -1].item() == causal.IGNORE  # padding is never learnt
    assert batch["attention_mask"][shorter, -1].item() == 0


def test_truncation_cuts_the_prompt_never_the_completion_and_counts_what_cannot_fit() -> None:
    tokenizer = bundled_tokenizer()
    long = pd.DataFrame({"prompt": ["word " * 200, "short"], "completion": ["spam", "a " * 100]})
    encoded, dropped = causal.encode_rows(long, tokenizer, 32, "{prompt}")
    assert dropped == 1  # the second row's completion alone is longer than 32 tokens
    ids, start = list(encoded["input_ids"][0]), int(encoded["completion_start"][0])
    assert len(ids) == 32
    assert ids[0] == tokenizer.cls_token_id  # the leading special token stays
    assert tokenizer.decode(ids[start:-1]).strip() == "spam"  # the completion is whole


# ----------------------------------------------------------------------------- scoring
def test_bits_per_byte_is_the_completions_loss_per_utf8_byte(decoder: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    tokenizer = causal.with_special_tokens(AutoTokenizer.from_pretrained(decoder))
    model = causal.load_causal(decoder)
    encoded, _ = causal.encode_rows(frame(["spam", "ham", "h\u00e9llo"]), tokenizer, 64, DEFAULT_TEMPLATE)
    nats = causal.completion_nats(model, encoded, tokenizer.pad_token_id, "cpu")
    for i, feature in enumerate(causal.to_features(encoded)):  # one row at a time, the model's own loss
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor([feature["input_ids"]]), labels=torch.tensor([feature["labels"]])
            )
        tokens = sum(1 for label in feature["labels"][1:] if label != causal.IGNORE)
        assert nats[i] == pytest.approx(out.loss.item() * tokens, rel=1e-4)
    n_bytes = encoded["completion_bytes"].to_numpy()
    assert n_bytes.tolist() == [5, 4, 7]  # " h\u00e9llo": the accent is two bytes
    assert causal.bits_per_byte(nats, n_bytes) == pytest.approx(nats.sum() / math.log(2) / 16)


def test_greedy_generation_in_left_padded_batches_is_what_one_at_a_time_gives(decoder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = causal.with_special_tokens(AutoTokenizer.from_pretrained(decoder))
    model = causal.load_causal(decoder)
    prompts = [DEFAULT_TEMPLATE.format(prompt=p) for p in PROMPTS]
    batched = causal.generate(model, tokenizer, prompts, 5, 3, "cpu")
    alone = [causal.generate(model, tokenizer, [p], 5, 1, "cpu")[0] for p in prompts]
    assert batched == alone
    assert tokenizer.padding_side == "right"  # left padding was for generation only
    ids = [tokenizer(p)["input_ids"] for p in prompts]  # as tokenize made them, given by id
    assert causal.generate(model, tokenizer, [], 5, 3, "cpu", ids) == batched


def test_the_label_prior_and_the_paired_bits_per_byte() -> None:
    train = pd.Series([" ham"] * 3 + [" spam"])
    test = pd.Series([" ham", " spam"])
    expected = -(math.log2(0.75) + math.log2(0.25)) / (4 + 5)
    assert evaluation.prior_bits(train, test) == pytest.approx(expected)
    assert evaluation.prior_bits(train, pd.Series([" eggs"])) is None
    rng = np.random.default_rng(0)
    n_bytes = np.full(200, 5.0)
    champion = rng.uniform(1, 3, 200)
    same = evaluation.paired_bits_per_byte(champion, champion, n_bytes)
    assert same[0] == same[1] and same[2] == same[3] == 0.0
    better = evaluation.paired_bits_per_byte(champion * 0.5, champion, n_bytes)
    assert better[0] < better[1] and better[3] < 0  # lower is better: the whole interval below 0
    assert better[2] < better[3]
    assert paired.RESAMPLES == 2000


def test_the_gate_on_a_lower_is_better_metric_turns_the_interval_for_its_neutral_tags() -> None:
    comparison = gate.Comparison("1", 100, 0, 0.20, 0.30, -0.15, -0.05)  # candidate - champion
    decision = gate.decide(0.20, 8.0, comparison, 0.0, "", "bits_per_byte", False, "base_bits_per_byte")
    assert decision.passed, decision.reason
    assert "base_bits_per_byte 8.0000" in decision.reason
    tags = gate.comparison_tags(decision, 0.20, 100, GENERATION)
    assert tags["gate_metric"] == "bits_per_byte"
    assert (tags["gate_diff_low"], tags["gate_diff_high"]) == ("0.050000", "0.150000")  # positive: better
    assert "gate_candidate_f1" not in tags
    worse = gate.decide(9.0, 8.0, comparison, 0.0, "", "bits_per_byte", False, "base_bits_per_byte")
    assert not worse.passed and "is not below base_bits_per_byte" in worse.reason
    assert "shared test rows" in worse.reason  # compared even so


# ----------------------------------------------------------------------------- LoRA
def test_lora_targets_are_found_per_architecture_and_new_weights_train_too(decoder: Path) -> None:
    model = causal.load_causal(decoder)
    expected = ["c_attn"] if model.config.model_type == "gpt2" else ["q_proj", "v_proj"]
    assert lora.target_modules("auto", lora.linear_module_names(model)) == expected
    cfg = Config(task="text-generation", peft="lora", lora_r=4)
    adapted = lora.with_lora(model, cfg, GENERATION.lora_task_type)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_the_stand_in_loads_as_a_decoder_and_its_new_head_is_what_lora_trains_beside_the_adapter() -> None:
    from transformers import AutoModelForCausalLM

    resolved = hub.resolve_base_model(BUNDLED_BASE_MODEL)
    assert causal.needs_decoder_flag(resolved)
    assert "is_decoder=True" in GENERATION.reference_problem(resolved)
    model, loading = AutoModelForCausalLM.from_pretrained(
        resolved, config=causal.causal_config(resolved), output_loading_info=True
    )
    assert model.config.is_decoder
    assert lora.new_modules(model, set(loading["missing_keys"])) == ["cls.predictions.transform"]
    assert lora.target_modules("auto", lora.linear_module_names(model)) == ["query", "value"]


def test_a_merged_adapter_generates_what_the_adapter_did(decoder: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(1)
    cfg = Config(task="text-generation", peft="lora", lora_r=4)
    model = lora.with_lora(causal.load_causal(decoder), cfg, GENERATION.lora_task_type)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.5)  # as if trained (B starts at zero)
    model.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(decoder).save_pretrained(tmp_path / "adapter")
    merged = causal.merge_verified(tmp_path / "adapter", decoder, PROMPTS, 6, tmp_path / "merged")
    assert not lora.is_adapter(merged)
    tokenizer = causal.with_special_tokens(AutoTokenizer.from_pretrained(merged))
    again = causal.generate(causal.load_causal(merged), tokenizer, PROMPTS, 6, 1, "cpu")
    adapter = causal.generate(
        causal.load_causal(tmp_path / "adapter", str(decoder)), tokenizer, PROMPTS, 6, 1, "cpu"
    )
    assert again == adapter


# ----------------------------------------------------------------------------- settings
def test_the_task_picks_its_registered_model_and_its_profile_section() -> None:
    generation = load_config("smoke", {"task": "text-generation"})
    classification = load_config("smoke", {})
    assert (generation.registered_model, classification.registered_model) == (
        "sms-spam-generator",
        "sms-spam-classifier",
    )
    assert generation.max_length == 64 and classification.max_length == 32  # smoke's text-generation section
    assert (
        load_config("smoke", {"task": "text-generation", "registered_model": "mine"}).registered_model
        == "mine"
    )
    with pytest.raises(UserError, match="prompt_column is a setting of the text-generation task"):
        load_config("smoke", {"prompt_column": "question"})
    with pytest.raises(UserError, match="best_model_metric f1 is a classifier's"):
        load_config("smoke", {"task": "text-generation", "best_model_metric": "f1"})


def test_generated_text_that_is_no_label_counts_as_wrong_and_as_not_the_positive_label() -> None:
    truth = ["spam", "ham", "spam", "ham"]
    said = ["spam", "hmm", "zzz", "ham"]
    metrics = evaluation.label_metrics(truth, said, ["ham", "spam"], "spam")
    assert metrics["accuracy"] == 0.5  # "hmm" is not "ham"
    assert (metrics["precision"], metrics["recall"]) == (1.0, 0.5)


def trained_tokenizer(kind: str) -> object:
    """A small tokenizer trained here on the corpus: byte-level BPE (GPT-2's kind) or BPE after a
    word-start marker (SentencePiece's kind, Llama's and Mistral's), with an end-of-text token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_finetune.settings import BUNDLED_DATA, PROJECT_DIR

    lines = (PROJECT_DIR / BUNDLED_DATA).read_text(encoding="utf-8").splitlines()[:2000]
    tok = Tokenizer(models.BPE())
    if kind == "byte-level":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["</s>"], initial_alphabet=alphabet)
    tok.train_from_iterator([*lines, DEFAULT_TEMPLATE.format(prompt="x") + " spam ham"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


@pytest.mark.parametrize("kind", ["byte-level", "metaspace"])
def test_the_completion_is_tokenized_as_it_follows_the_prompt_whatever_the_tokenizer(kind: str) -> None:
    tokenizer = causal.with_special_tokens(trained_tokenizer(kind))
    rows = pd.DataFrame({"prompt": ["WIN cash now", "see you at 7"], "completion": ["spam", "ham"]})
    encoded, _ = causal.encode_rows(rows, tokenizer, 64, DEFAULT_TEMPLATE)
    for row in encoded.itertuples():
        together = tokenizer(row.prompt_text + row.completion_text)["input_ids"]
        ids = list(row.input_ids)
        assert ids[:-1] == together  # exactly the ids of prompt and completion as one text
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[row.completion_start : -1]).strip() == row.completion


def test_a_step_refuses_an_upstream_run_of_another_task_in_one_line() -> None:
    import mlflow

    from hf_finetune import tracking

    with mlflow.start_run(tags={"pipeline.step": "prepare"}) as run:
        mlflow.log_param("config.task", "text-generation")
    assert tracking.get_upstream(run.info.run_id, "prepare", "prepare_run_id", "text-generation")
    with pytest.raises(UserError, match=r"is a text-generation run, not text-classification: pass --task"):
        tracking.get_upstream(run.info.run_id, "prepare", "prepare_run_id", "text-classification")


def test_a_first_version_must_beat_its_base_model_and_a_missing_base_figure_passes_nothing() -> None:
    tied = gate.decide(0.5, 0.5, None, 0.0, "", "bits_per_byte", False, "base_bits_per_byte")
    assert not tied.passed and "is not below base_bits_per_byte" in tied.reason
    assert gate.decide(0.4, 0.5, None, 0.0, "", "bits_per_byte", False, "base_bits_per_byte").passed
    floor = GENERATION.gate_floor(Config(task="text-generation"), {"test_bits_per_byte": 0.4})
    assert not gate.decide(0.4, floor, None, 0.0, "", "bits_per_byte", False).passed
    assert Config(task="text-generation").registered_model == "sms-spam-generator"
    assert Config(task="text-generation", registered_model="mine").registered_model == "mine"
