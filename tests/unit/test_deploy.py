"""The Kubernetes variant and the Databricks spec, read and rendered by MLflow's own backend code.

No Docker daemon, cluster or workspace here: only the calls that would leave this machine (image
build and push, kube config, the Jobs API, the DBFS upload) are replaced, and what MLflow would
have sent is asserted on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import mlflow
import pytest

from deploy import check
from hf_finetune.errors import UserError
from tests.conftest import PROJECT_DIR

K8S_DIR = PROJECT_DIR / "deploy" / "kubernetes"
K8S_CONFIG = K8S_DIR / "kubernetes_config.json"
DATABRICKS_SPEC = PROJECT_DIR / "deploy" / "databricks" / "cluster_spec.json"


def load(directory: Path) -> Any:
    from hf_finetune import compat

    return compat.load_project(str(directory))


def test_the_kubernetes_variant_is_a_docker_project_with_the_root_entry_points() -> None:
    root, k8s = load(PROJECT_DIR), load(K8S_DIR)
    assert k8s.docker_env["image"] == "hf-finetune-pipeline-base:0.1.0"
    assert k8s.env_type == "docker_env" and root.env_type == "conda_env"
    assert sorted(k8s._entry_points) == sorted(root._entry_points)
    for name, entry in root._entry_points.items():
        twin = k8s._entry_points[name]
        assert twin.command == entry.command, name
        params = {k: (p.type, p.default) for k, p in entry.parameters.items()}
        twin_params = {k: (p.type, p.default) for k, p in twin.parameters.items()}
        if name == "main":  # in the container there is one environment
            assert twin_params.pop("env_manager") == ("string", "local")
            params.pop("env_manager")
        assert twin_params == params, name


def test_the_image_holds_everything_a_step_reads_at_run_time() -> None:
    dockerfile = (K8S_DIR / "Dockerfile").read_text()
    for needed in ("COPY steps/ steps/", "COPY profiles/ profiles/", "COPY data/ data/", "COPY MLproject"):
        assert needed in dockerfile
    assert "pip install -e ." in dockerfile  # steps find profiles/, data/ and MLproject beside them
    ignored = (PROJECT_DIR / ".dockerignore").read_text().split()
    assert {".venv", "mlflow.db", "mlruns", ".env"} <= set(ignored)


class FakeBatchApi:
    submitted: ClassVar[list[dict[str, Any]]] = []

    def create_namespaced_job(self, namespace: str, body: dict[str, Any], pretty: bool) -> None:
        FakeBatchApi.submitted.append({"namespace": namespace, "body": body})


def test_mlflow_renders_the_kubernetes_job_from_our_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.projects.docker as mlflow_docker
    import mlflow.projects.kubernetes as mlflow_k8s

    image_tag = "registry.example.com/ml/hf-finetune-pipeline:5e3d1a"
    digest = "sha256:" + "ab" * 32
    built: dict[str, Any] = {}

    def build_docker_image(**kw: Any) -> Any:
        built.update(kw)
        return SimpleNamespace(tags=[image_tag])

    monkeypatch.setattr(mlflow_docker, "validate_docker_installation", lambda: None)
    monkeypatch.setattr(mlflow_docker, "build_docker_image", build_docker_image)
    monkeypatch.setattr(mlflow_k8s, "push_image_to_registry", lambda tag: digest)
    monkeypatch.setattr(mlflow_k8s, "_load_kube_context", lambda context=None: built.update(context=context))
    monkeypatch.setattr(mlflow_k8s.kubernetes.client, "BatchV1Api", FakeBatchApi)
    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", "http://mlflow.mlflow.svc.cluster.local:5000")
    FakeBatchApi.submitted.clear()
    experiment = mlflow.create_experiment("k8s", artifact_location=str(tmp_path / "artifacts"))
    monkeypatch.chdir(PROJECT_DIR)  # the config's template path is relative to the repository root

    submitted = mlflow.projects.run(
        str(K8S_DIR),
        entry_point="main",
        parameters={"profile": "cuda", "nproc_per_node": "2"},
        experiment_id=experiment,
        backend="kubernetes",
        backend_config=str(K8S_CONFIG),
        synchronous=False,
    )

    assert built["repository_uri"] == "registry.example.com/ml/hf-finetune-pipeline"
    assert built["base_image"] == "hf-finetune-pipeline-base:0.1.0"
    assert built["context"] == "my-gpu-cluster"
    [job] = FakeBatchApi.submitted
    assert job["namespace"] == "mlflow"
    body = job["body"]
    container = body["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{image_tag}@{digest}"
    command = container["command"]
    assert command[:3] == ["python", "-m", "steps.main"]
    joined = " ".join(command)
    assert "--profile cuda" in joined and "--nproc_per_node 2" in joined and "--env_manager local" in joined
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_RUN_ID"]["value"] == submitted.run_id
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlflow.svc.cluster.local:5000"
    assert (
        env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-tracking-credentials"
    )
    assert "value" not in env["MLFLOW_TRACKING_PASSWORD"]  # from a Secret, never inline
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert body["spec"]["backoffLimit"] == 0

    # the kubernetes client's own model accepts it as a Job
    from kubernetes.client import ApiClient

    typed = ApiClient()._ApiClient__deserialize(body, "V1Job")  # type: ignore[attr-defined]
    assert typed.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert typed.spec.template.spec.volumes[0].empty_dir.medium == "Memory"
    run = mlflow.MlflowClient().get_run(submitted.run_id)
    assert run.data.tags["mlflow.project.backend"] == "kubernetes"
    assert run.data.tags["mlflow.project.env"] == "docker"


def submit_to_databricks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec_file: Path) -> dict[str, Any]:
    """``mlflow.projects.run(backend="databricks")`` with only the DBFS upload and the Jobs API
    calls replaced; the Jobs ``runs/submit`` request MLflow would have sent."""
    import mlflow.projects.databricks as mlflow_databricks

    sent: list[dict[str, Any]] = []
    runner = mlflow_databricks.DatabricksJobRunner
    monkeypatch.setattr(mlflow_databricks, "before_run_validations", lambda uri, config: None)
    monkeypatch.setattr(runner, "_upload_project_to_dbfs", lambda self, d, e: "/dbfs/mlflow/code/abc.tar.gz")
    monkeypatch.setattr(runner, "_jobs_runs_submit", lambda self, body: sent.append(body) or {"run_id": 7})
    monkeypatch.setattr(
        mlflow_databricks.DatabricksSubmittedRun, "_print_description_and_log_tags", lambda s: None
    )
    experiment = mlflow.create_experiment(spec_file.stem, artifact_location=str(tmp_path / "artifacts"))
    mlflow.projects.run(
        str(PROJECT_DIR),
        entry_point="main",
        parameters={"profile": "cuda"},
        experiment_id=experiment,
        backend="databricks",
        backend_config=str(spec_file),
        env_manager="local",
        synchronous=False,
    )
    [body] = sent
    return body


def test_mlflow_submits_the_databricks_cluster_spec_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.projects.databricks as mlflow_databricks

    spec = json.loads(DATABRICKS_SPEC.read_text())
    # MLflow's own check, as it runs it for a remote tracking server
    mlflow_databricks.before_run_validations("https://mlflow.example.com", dict(spec))

    body = submit_to_databricks(tmp_path, monkeypatch, DATABRICKS_SPEC)
    # exactly our cluster: MLflow's own keys (env manager, storage dir...) stay out of it
    assert body["new_cluster"] == spec["new_cluster"]
    packages = [lib["pypi"]["package"] for lib in body["libraries"]]
    assert packages[: len(spec["libraries"])] == [lib["pypi"]["package"] for lib in spec["libraries"]]
    assert packages[-1] == f"mlflow=={mlflow.__version__}"  # MLflow adds itself
    shell = body["shell_command_task"]["command"][-1]
    assert "mlflow run" in shell and "--entry-point main" in shell and "--env-manager local" in shell
    assert "-P profile=cuda" in shell


def test_a_flat_databricks_spec_would_leak_mlflow_settings_into_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the spec wraps its cluster in new_cluster (the 3.x docs' flat example does not)."""
    flat = json.loads(DATABRICKS_SPEC.read_text())["new_cluster"]
    flat_file = tmp_path / "flat.json"
    flat_file.write_text(json.dumps(flat))
    body = submit_to_databricks(tmp_path, monkeypatch, flat_file)
    assert set(body["new_cluster"]) - set(flat), "MLflow added its own keys to the cluster request"
    with pytest.raises(UserError, match="lacks a top-level 'new_cluster'"):
        check.check_databricks(flat_file)


# ----------------------------------------------------------------------------- deploy.check
def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_the_committed_configs_pass_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PROJECT_DIR)
    assert check.check_kubernetes(K8S_CONFIG)["kube-job-template"]["kind"] == "Job"
    assert check.check_databricks(DATABRICKS_SPEC)["new_cluster"]["num_workers"] == 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kube-context": "c", "repository-uri": "r"}, "lacks 'kube-job-template-path'"),
        (
            {"kube-job-template-path": "deploy/kubernetes/kubernetes_job_template.yaml"},
            "lacks 'repository-uri'",
        ),
        ({"kube-job-template-path": "nope.yaml", "repository-uri": "r"}, "'nope.yaml' in .* does not exist"),
        ("{not json", r"is not valid JSON \(line 1"),
        ("[1, 2]", "must hold a JSON object"),
    ],
)
def test_a_broken_kubernetes_config_names_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: Any, message: str
) -> None:
    monkeypatch.chdir(PROJECT_DIR)
    with pytest.raises(UserError, match=message):
        check.check_kubernetes(write(tmp_path / "k.json", config))


def test_a_job_template_without_namespace_or_container_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "job.yaml"
    template.write_text("kind: Job\nmetadata: {name: x}\nspec: {template: {spec: {containers: []}}}\n")
    config = write(tmp_path / "k.json", {"kube-job-template-path": str(template), "repository-uri": "r"})
    with pytest.raises(UserError, match=r"lacks metadata\.namespace"):
        check.check_kubernetes(config)
    template.write_text("kind: Job\nmetadata: {namespace: ml}\nspec: {template: {spec: {containers: []}}}\n")
    with pytest.raises(UserError, match=r"lacks spec.template.spec.containers\[0\]"):
        check.check_kubernetes(config)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"existing_cluster_id": "0123"}, "names an existing cluster"),
        ({"new_cluster": {"node_type_id": "g5.xlarge", "num_workers": 0}}, "lacks new_cluster.spark_version"),
        ({"new_cluster": {"spark_version": "15.4.x", "num_workers": 0}}, "lacks new_cluster.node_type_id"),
        ({"new_cluster": {"spark_version": "15.4.x", "node_type_id": "g5.xlarge"}}, "num_workers"),
        ({"new_cluster": {}, "cluster_name": "x"}, "keys MLflow ignores: cluster_name"),
        (
            {"new_cluster": {"spark_version": "s", "node_type_id": "n", "num_workers": 0}, "libraries": "x"},
            "'libraries' must be a list",
        ),
    ],
)
def test_a_broken_databricks_spec_names_what_is_wrong(tmp_path: Path, spec: Any, message: str) -> None:
    with pytest.raises(UserError, match=message):
        check.check_databricks(write(tmp_path / "d.json", spec))


def test_the_check_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    bad = write(tmp_path / "d.json", {"spark_version": "15.4.x"})
    done = subprocess.run(
        [sys.executable, "-m", "deploy.check", "databricks", str(bad)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("deploy.check: error: ")
    good = subprocess.run(
        [sys.executable, "-m", "deploy.check", "kubernetes"], cwd=PROJECT_DIR, capture_output=True, text=True
    )
    assert good.returncode == 0, good.stderr
