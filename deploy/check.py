"""python -m deploy.check kubernetes|databricks [FILE]: check a backend config before `mlflow run`.

MLflow finds most mistakes in these files only after it has created a run, built and pushed an
image, or uploaded the project, and then with a KeyError. This reads them the way MLflow's
Kubernetes and Databricks backends do (with MLflow's own parser where it has one) and says in one
line what is missing and where.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from hf_finetune.errors import UserError

DEPLOY_DIR = Path(__file__).resolve().parent
DEFAULTS = {
    "kubernetes": DEPLOY_DIR / "kubernetes" / "kubernetes_config.json",
    "databricks": DEPLOY_DIR / "databricks" / "cluster_spec.json",
}


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass the backend config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data


def check_kubernetes(path: Path) -> dict[str, Any]:
    """The job template MLflow will submit, after the checks MLflow's backend makes (and more)."""
    from mlflow.exceptions import ExecutionException
    from mlflow.projects import _parse_kubernetes_config

    config = read_json(path)
    for key, what in (
        ("kube-job-template-path", "the Job template MLflow fills in"),
        ("repository-uri", "the image repository MLflow pushes the run's image to"),
    ):
        if not isinstance(config.get(key), str) or not config[key]:
            raise UserError(f"{path} lacks {key!r} ({what}): add it")
    if "kube-context" in config and not isinstance(config["kube-context"], str):
        raise UserError(f"{path}: 'kube-context' must be a context name from your kubeconfig")
    template_path = Path(config["kube-job-template-path"])
    if not template_path.is_file():
        raise UserError(
            f"kube-job-template-path {str(template_path)!r} in {path} does not exist (a relative "
            f"path is read from the directory you run `mlflow run` in: {Path.cwd()})"
        )
    try:
        template = yaml.safe_load(template_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{template_path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(template, dict) or template.get("kind") != "Job":
        raise UserError(f"{template_path} must be a Kubernetes Job (kind: Job)")
    if not (template.get("metadata") or {}).get("namespace"):
        raise UserError(f"{template_path} lacks metadata.namespace (MLflow submits the Job there): add it")
    containers = (((template.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        raise UserError(
            f"{template_path} lacks spec.template.spec.containers[0] (MLflow puts the run's image "
            "and command there): add one container"
        )
    try:
        parsed: dict[str, Any] = _parse_kubernetes_config(config)
    except ExecutionException as exc:
        raise UserError(f"{path}: {exc.message}") from None
    return parsed


def check_databricks(path: Path) -> dict[str, Any]:
    """The cluster spec, in the shape MLflow's Databricks backend reads."""
    spec = read_json(path)
    if "existing_cluster_id" in spec:
        raise UserError(
            f"{path} names an existing cluster: MLflow runs projects on Databricks only on a new "
            "cluster; put the cluster's settings under 'new_cluster'"
        )
    if "new_cluster" not in spec:
        raise UserError(
            f"{path} lacks a top-level 'new_cluster': MLflow's Databricks backend reads the cluster "
            "from there (and libraries beside it); without it, MLflow's own settings leak into the "
            'cluster request. Wrap the cluster settings: {"new_cluster": {...}, "libraries": [...]}'
        )
    extra = sorted(set(spec) - {"new_cluster", "libraries"})
    if extra:
        raise UserError(f"{path} has keys MLflow ignores: {', '.join(extra)}; keep new_cluster and libraries")
    cluster = spec["new_cluster"]
    if not isinstance(cluster, dict):
        raise UserError(f"{path}: 'new_cluster' must be an object of cluster settings")
    if "spark_version" not in cluster:
        raise UserError(
            f"{path} lacks new_cluster.spark_version (a Databricks runtime, e.g. 15.4.x-gpu-ml-scala2.12)"
        )
    if "node_type_id" not in cluster and "instance_pool_id" not in cluster:
        raise UserError(f"{path} lacks new_cluster.node_type_id (or instance_pool_id): the VM type to start")
    if "num_workers" not in cluster and "autoscale" not in cluster:
        raise UserError(f"{path} lacks new_cluster.num_workers (0 for a single node) or autoscale")
    libraries = spec.get("libraries", [])
    if not isinstance(libraries, list) or not all(isinstance(lib, dict) and lib for lib in libraries):
        raise UserError(f'{path}: \'libraries\' must be a list like [{{"pypi": {{"package": "name"}}}}]')
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.check", description=__doc__.splitlines()[0])
    parser.add_argument("backend", choices=sorted(DEFAULTS))
    parser.add_argument("file", nargs="?", type=Path, help="default: the one under deploy/")
    args = parser.parse_args(argv)
    path = args.file or DEFAULTS[args.backend]
    try:
        if args.backend == "kubernetes":
            check_kubernetes(path)
        else:
            check_databricks(path)
    except UserError as exc:
        print(f"deploy.check: error: {exc}", file=sys.stderr)
        return 2
    print(f"deploy.check: {path} is a valid {args.backend} backend config")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
