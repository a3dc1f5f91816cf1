"""LoRA adapters (PEFT): which modules they can target, whether a folder is one, how one is merged.

What differs between tasks (the PEFT task type, the head that must train too) is the task's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_finetune.errors import UserError
from hf_finetune.settings import AUTO_TARGETS, Settings, module_names
from hf_finetune.tasks.base import Task

ADAPTER_CONFIG = "adapter_config.json"
# lora_target_modules auto: the attention's query and value projections, by the names each
# architecture gives them (the LoRA paper's choice); GPT-2 fuses them into one layer
ATTENTION_TARGETS = (
    ("query", "value"),  # BERT, RoBERTa, ELECTRA, XLM-R (and BERT as a causal LM)
    ("q_proj", "v_proj"),  # Llama, Qwen, Mistral, Gemma, OPT, Phi-3
    ("c_attn",),  # GPT-2, distilgpt2
    ("q_lin", "v_lin"),  # DistilBERT
    ("query_key_value",),  # GPT-NeoX, Pythia, Falcon
)


def linear_module_names(model: Any) -> list[str]:
    """The distinct last names of the model's linear layers (GPT-2's ``Conv1D`` is one too):
    what LoRA ``target_modules`` match."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D))
        }
    )


def target_modules(setting: str, available: list[str]) -> list[str]:
    """``lora_target_modules`` as module names: as written, or for ``auto`` the attention's query
    and value projections of the first known naming the model has."""
    if setting.strip() != AUTO_TARGETS:
        return module_names(setting)
    for names in ATTENTION_TARGETS:
        if all(name in available for name in names):
            return list(names)
    raise UserError(
        "lora_target_modules auto knows no attention layers of this base model: name them "
        f"(its linear layers are {', '.join(available)})"
    )


def new_modules(model: Any, missing: set[str]) -> list[str]:
    """The smallest set of whole modules every one of whose weights ``from_pretrained`` newly
    initialised (``missing``): a head the base checkpoint did not have, which must train beside
    the adapter (PEFT's ``modules_to_save``). A module holding a pretrained weight (an output
    layer tied to the embeddings) is never one."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f"{kept}.") for kept in found):
            continue
        params = [f"{name}.{p}" for p, _ in module.named_parameters(remove_duplicate=False)]
        if params and all(p in missing for p in params):
            found.append(name)
    return found


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


def with_lora(model: Any, cfg: Settings, task_type: str, train_too: list[str] | None = None) -> Any:
    """``model`` with LoRA adapters on ``cfg``'s target modules; only they train, what PEFT's
    ``task_type`` (the task's: ``SEQ_CLS`` keeps a new classifier head trainable) adds, and the
    modules ``train_too`` names (newly initialised ones: ``new_modules``)."""
    from peft import LoraConfig, TaskType, get_peft_model

    available = linear_module_names(model)
    wanted = target_modules(cfg.lora_target_modules, available)
    check_target_modules(wanted, available)
    config = LoraConfig(
        task_type=TaskType[task_type],
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=wanted,
        modules_to_save=train_too or None,
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
