"""hf-finetune-pipeline library."""
