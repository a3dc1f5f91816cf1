"""hf-finetune-pipeline: one module per MLflow Projects entry point, plus small shared helpers.

Run a step as a module (``python -m steps.tokenize``), never as a file: as a file,
``steps/tokenize.py`` and ``steps/evaluate.py`` would shadow the standard library's ``tokenize``
and the ``evaluate`` package.
"""
