"""End to end: ``main`` with ``task=text-generation``, offline, through every step.

Two stores: the bundled MiniLM as a causal LM (the offline stand-in, fully fine-tuned, logged
``full``, then ``checkpoint``), run twice so that the second version meets a champion at the gate; and a tiny
randomly initialised GPT-2 placed in a hub cache under a hub id, fine-tuned with LoRA and logged
``reference`` (adapter only), which persist then makes self-contained and verifies. Then predict
with the champion, and the refusals ``main`` makes before any training.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests

from hf_finetune import chain, tags
from hf_finetune.registry.card import MAIN_RUN_TAG
from hf_finetune.tasks.text_generation.task import DEFAULT_TEMPLATE
from steps import main as main_step
from steps import predict
from tests.conftest import deleted_unless_a_test_failed, isolated_env, main_in_store, use_store
from tests.recorded import artifact_paths, child_runs, in_hub_cache, java_17_or_newer, tiny_decoder
from tests.server import model_server

pytestmark = pytest.mark.slow
GENERATOR = "sms-spam-generator"
SMOKE = ["--profile", "smoke", "--task", "text-generation"]


@pytest.fixture(scope="module")
def generation_store(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Path, str, str]]:
    """Two smoke mains on the stand-in: the first makes v1 (logged ``full``) champion, the second
    (another seed, so another split and model, logged ``checkpoint``: by path, never loaded) is
    judged against it. (store, first run, second run)."""
    root = tmp_path_factory.mktemp("generation-store")
    with deleted_unless_a_test_failed(request, root):
        first = main_in_store(root, SMOKE)
        with pytest.MonkeyPatch.context() as mp:
            use_store(root, mp)
            second = [*SMOKE, "--seed", "1", "--save_mode", "checkpoint", "--env_manager", "local"]
            assert main_step.main(second) == 0
            client = mlflow.MlflowClient()
            mains = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                "tags.`pipeline.step` = 'main'",
                order_by=["attributes.start_time DESC"],
            )
        yield root, first, mains[0].info.run_id


@pytest.fixture
def store(generation_store: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    root, first, second = generation_store
    use_store(root, monkeypatch)
    return first, second


def test_evaluate_measures_bits_per_byte_against_the_base_model_and_the_label_prior(
    store: tuple[str, str],
) -> None:
    metrics = child_runs(store[0])["evaluate"].data.metrics
    for name in ("test_bits_per_byte", "base_bits_per_byte", "test_perplexity", "test_exact_match"):
        assert name in metrics, name
    assert metrics["test_bits_per_byte"] < metrics["base_bits_per_byte"]
    assert (
        metrics["test_bits_per_byte"] < metrics["prior_bits_per_byte"]
    )  # it learnt more than the labels' shares
    assert metrics["test_perplexity"] >= 1.0
    assert 0.5 <= metrics["test_exact_match"] <= 1.0
    for name in ("test_f1", "classical_f1", "test_precision", "test_recall"):  # the generated label
        assert 0.0 <= metrics[name] <= 1.0, name
    evaluated = child_runs(store[0])["evaluate"].info.run_id
    samples = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=evaluated, artifact_path="evaluation/generations.csv")
    )
    assert {"prompt", "completion", "prediction", "bits_per_byte"} <= set(samples.columns)
    assert set(samples["completion"].str.strip()) <= {"ham", "spam"}


def test_tokenize_applied_the_template_and_the_version_carries_it_with_its_task(
    store: tuple[str, str],
) -> None:
    runs = child_runs(store[0])
    assert runs["tokenize"].data.tags[tags.PROMPT_TEMPLATE_TAG] == DEFAULT_TEMPLATE
    assert runs["tokenize"].data.metrics["test_rows_dropped"] == 0.0
    version = mlflow.MlflowClient().get_model_version(GENERATOR, "1")
    assert version.tags["task"] == "text-generation"
    assert version.tags[tags.PROMPT_TEMPLATE_TAG] == DEFAULT_TEMPLATE
    assert (version.tags["persisted"], version.tags["verified"], version.tags["gate"]) == (
        "true",
        "true",
        "passed",
    )
    assert version.tags["gate_metric"] == "bits_per_byte"
    assert "base_bits_per_byte" in version.tags["gate_reason"]
    assert mlflow.MlflowClient().get_registered_model(GENERATOR).tags["task"] == "text-generation"


def test_the_second_version_was_compared_with_the_champion_each_scored_natively(
    store: tuple[str, str],
) -> None:
    client = mlflow.MlflowClient()
    second = client.get_model_version(GENERATOR, "2")
    assert second.tags[MAIN_RUN_TAG] == store[1]
    assert second.tags["gate_compared_version"] == "1"
    assert int(second.tags["gate_rows"]) > 0 and int(second.tags["gate_rows_excluded"]) > 0  # another split
    low, high = float(second.tags["gate_diff_low"]), float(second.tags["gate_diff_high"])
    assert low <= high
    candidate, champion = float(second.tags["gate_candidate"]), float(second.tags["gate_champion"])
    assert candidate > 0 and champion > 0
    # the interval is of champion - candidate (positive: the candidate is better) and holds it
    assert low <= champion - candidate <= high
    assert "gate_candidate_f1" not in second.tags
    assert (second.tags["save_mode"], second.tags["verified"]) == ("checkpoint", "true")
    aliases = {k: str(v) for k, v in client.get_registered_model(GENERATOR).aliases.items()}
    assert aliases["challenger"] == "2"
    assert aliases["champion"] == ("2" if second.tags["gate"] == "passed" else "1")


def test_the_champion_answers_openai_style_completions_with_its_template_applied(
    store: tuple[str, str],
) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{GENERATOR}@champion")
    answers = model.predict(pd.DataFrame({"prompt": ["WIN a prize now, reply YES", "see you at 6"]}))
    assert [a["object"] for a in answers] == ["text_completion"] * 2
    assert all(a["choices"][0]["text"].strip() in ("spam", "ham") for a in answers), answers
    assert not answers[0]["model"].startswith("/")  # the base model's id, never a local path
    whole = model.predict({"prompt": "URGENT! claim your cash"})[0]["choices"][0]["text"]
    one = model.predict({"prompt": "URGENT! claim your cash", "max_tokens": 1})[0]["choices"][0]
    assert one["finish_reason"] == "length" or one["text"] == whole
    assert whole.startswith(one["text"]) and len(one["text"]) < len(whole) + 1


def test_the_champion_served_over_http_answers_openai_style_and_batched(
    store: tuple[str, str], tmp_path: Path
) -> None:
    with model_server(f"models:/{GENERATOR}@champion", tmp_path / "serve.log") as uri:
        single = {"prompt": "WIN a prize now, reply YES", "max_tokens": 3}
        one = requests.post(f"{uri}/invocations", json=single, timeout=120)
        records = {"dataframe_records": [{"prompt": "see you at 6"}, {"prompt": "URGENT! claim"}]}
        two = requests.post(f"{uri}/invocations", json=records, timeout=120)
    assert one.status_code == 200 and two.status_code == 200, (one.text, two.text)
    unwrapped = one.json()  # MLflow's unified LLM request: the answer as OpenAI gives it
    answer = unwrapped[0] if isinstance(unwrapped, list) else unwrapped
    assert answer["object"] == "text_completion" and answer["choices"][0]["text"].strip() in ("spam", "ham")
    assert not answer["model"].startswith("/")  # the base model's id, never a local path
    batched = two.json()["predictions"]
    assert len(batched) == 2 and all(a["choices"][0]["text"].strip() in ("spam", "ham") for a in batched)


def test_predict_takes_the_task_from_the_model_and_writes_a_completion_per_prompt(
    store: tuple[str, str],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "in.csv"
    rows = {"id": [1, 2, 3], "text": ["Free entry! txt WIN", "are you coming?", "ok"]}
    pd.DataFrame(rows).to_csv(data, index=False)
    common = ["--profile", "smoke", "--model_uri", f"models:/{GENERATOR}@champion", "--data", str(data)]
    assert predict.main([*common, "--output", str(tmp_path / "out.parquet")]) == 0  # no --task given
    local = pd.read_parquet(tmp_path / "out.parquet")
    assert list(local.columns) == ["id", "text", "completion"]
    assert set(local["completion"]) <= {"spam", "ham"}
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    run = client.search_runs(experiments, "tags.`pipeline.step` = 'predict'", max_results=1)[0]
    assert run.data.metrics["rows_scored"] == 3.0
    if not java_17_or_newer() and not os.environ.get("PIPELINE_REQUIRE_SPARK"):
        pytest.skip("engine spark needs Java 17 or newer (apt-get install openjdk-17-jre-headless)")
    pytest.importorskip("pyspark", reason="engine spark needs pip install -e '.[spark]'")
    # Spark's JVM, started here, lives as long as pytest, and so does the folder its Python
    # workers start in: never this module's store, deleted after it
    monkeypatch.chdir(tmp_path_factory.getbasetemp())
    assert predict.main([*common, "--output", str(tmp_path / "spark"), "--engine", "spark"]) == 0
    spark = pd.read_parquet(tmp_path / "spark").set_index("id").loc[local["id"]]
    assert spark["completion"].tolist() == local["completion"].tolist()


def test_main_refuses_a_task_the_registered_model_does_not_hold_before_any_run(
    store: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    client = mlflow.MlflowClient()
    before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    argv = ["--profile", "smoke", "--registered_model", GENERATOR, "--env_manager", "local"]
    assert main_step.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].endswith(
        f"registered model '{GENERATOR}' holds text-generation models, not text-classification: "
        "choose another --registered_model (or leave it out: each task has its own default)"
    )
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == before


def test_a_reference_of_the_stand_in_is_refused_before_any_run(
    store: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*SMOKE, "--peft", "lora", "--save_mode", "reference", "--env_manager", "local"]
    assert main_step.main(argv) == 2
    assert "lacks is_decoder=True" in capsys.readouterr().err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- LoRA by reference
@pytest.fixture(scope="module")
def lora_reference(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Path, str]]:
    """A tiny GPT-2 under a hub id, LoRA-fine-tuned and logged by reference."""
    root = tmp_path_factory.mktemp("gpt2-reference")
    hub_cache = Path(isolated_env(root)["HF_HOME"]) / "hub"
    in_hub_cache(tiny_decoder("gpt2", tmp_path_factory.mktemp("tiny-gpt2")), "tiny-org/tiny-gpt2", hub_cache)
    argv = [*SMOKE, "--base_model", "tiny-org/tiny-gpt2", "--peft", "lora", "--save_mode", "reference"]
    argv += ["--registered_model", "tiny-generator", "--max_steps", "4"]
    with deleted_unless_a_test_failed(request, root):
        yield root, main_in_store(root, argv)


def test_a_lora_reference_holds_the_adapter_only_until_persist_folds_it_in_verified(
    lora_reference: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, run_id = lora_reference
    use_store(root, monkeypatch)
    runs = child_runs(run_id)
    assert "adapter/adapter_config.json" in artifact_paths(runs["finetune"].info.run_id)
    logged = runs[chain.LOG_MODEL].data
    assert logged.tags["save_mode"] == "reference"
    assert logged.metrics["model_artifact_bytes"] < 1_000_000  # the adapter and metadata, no base weights
    client = mlflow.MlflowClient()
    version = client.get_model_version("tiny-generator", "1")
    assert version.tags["base_model"] == "tiny-org/tiny-gpt2"
    assert (version.tags["persisted"], version.tags["verified"]) == ("true", "true")
    assert str(client.get_registered_model("tiny-generator").aliases["champion"]) == "1"
    files = {f.path for f in mlflow.artifacts.list_artifacts(artifact_uri="models:/tiny-generator/1")}
    assert "model" in files  # persist wrote whole weights into the model's own artifacts
    # persist's verification: the persisted model generates what evaluate's model generated
    expected = mlflow.artifacts.load_dict(
        f"runs:/{runs[chain.LOG_MODEL].info.run_id}/expected_predictions.json"
    )
    model = mlflow.pyfunc.load_model("models:/tiny-generator@champion")
    said = [
        a["choices"][0]["text"].strip() for a in model.predict(pd.DataFrame({"prompt": expected["texts"]}))
    ]
    assert said == expected["labels"]
