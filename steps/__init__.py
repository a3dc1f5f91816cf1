"""hf-finetune-pipeline's entry points: one module per ``MLproject`` entry point, and ``lineage``.

What they share is the library ``hf_finetune`` (``docs/architecture.md``).

Run a step as a module (``python -m steps.tokenize``), never as a file: as a file,
``steps/tokenize.py`` and ``steps/evaluate.py`` would shadow the standard library's ``tokenize``
and the ``evaluate`` package.
"""
