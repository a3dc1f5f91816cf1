"""LoRA adapters (PEFT): which modules they can target, whether a folder is one, how one is merged.

What differs between tasks (the PEFT task type, the head that must train too) is the task's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_finetune.errors import UserError
from hf_finetune.settings import Settings, module_names
from hf_finetune.tasks.base import Task

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


def save_merged(model: Any, out: Path) -> None:
    """Save a PEFT model with its LoRA adapter folded into the base weights: an ordinary model
    folder. The one place the project merges an adapter (finetune's checkpoint, persist, and
    ``merge_adapter``)."""
    model.merge_and_unload().save_pretrained(out)


def check_target_modules(wanted: list[str], available: list[str]) -> None:
    """LoRA adapts modules by name: each wanted name must be one the model has."""
    missing = [name for name in wanted if name not in available]
    if missing:
        raise UserError(
            f"lora_target_modules {', '.join(missing)} not found in the base model: "
            f"its linear layers are {', '.join(available)}"
        )


def with_lora(model: Any, cfg: Settings, task_type: str) -> Any:
    """``model`` with LoRA adapters on ``cfg``'s target modules; only they train, and what PEFT's
    ``task_type`` (the task's: ``SEQ_CLS`` keeps a new classifier head trainable) adds."""
    from peft import LoraConfig, TaskType, get_peft_model

    wanted = module_names(cfg.lora_target_modules)
    check_target_modules(wanted, linear_module_names(model))
    config = LoraConfig(
        task_type=TaskType[task_type],
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=wanted,
    )
    return get_peft_model(model, config)


def merge_adapter(task: Task, adapter: Path, base_model: str, id2label: dict[int, str], out: Path) -> Path:
    """Fold a LoRA adapter into its base model's weights: one ordinary, self-contained model
    folder (weights, config, tokenizer) that predicts what base + adapter did."""
    from transformers import AutoTokenizer

    save_merged(task.load_trained(adapter, base_model, id2label), out)
    AutoTokenizer.from_pretrained(
        adapter if (adapter / "tokenizer_config.json").is_file() else base_model
    ).save_pretrained(out)
    return out
