"""The text-classification task: labelled texts in, one label per text out.

- ``task``: the task as the steps see it (``tasks.base.Task``), with its own settings;
- ``classifier``: the sequence classifier: token ids, loading, merging an adapter, probabilities;
- ``measures``: metrics, the gate's paired F1, curves and class weights (pure functions);
- ``evaluation``: the test split beside the untrained head, the classical model and the probe;
- ``classical``: the classical model a user would build instead (TF-IDF + a linear SVM).
"""
