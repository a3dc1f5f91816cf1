"""Where a model trains and predicts: the device asked for, if it is there, and its precision."""

from __future__ import annotations

from hf_finetune.errors import UserError


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
