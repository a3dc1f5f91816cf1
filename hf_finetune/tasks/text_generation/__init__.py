"""The text-generation task: prompt/completion rows in, a causal language model out.

- ``task``: the task as the steps see it (``tasks.base.Task``), with its own settings;
- ``causal``: the causal LM: rows as token ids (loss on the completion), loading, scoring in bits,
  greedy generation, merging an adapter;
- ``evaluation``: the test split beside the base model, the label prior and the classical model.
"""
