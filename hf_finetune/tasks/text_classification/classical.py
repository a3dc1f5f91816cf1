"""The classical model a user would build instead of fine-tuning: TF-IDF + a linear SVM.

Word 1-2-grams and character 2-5-grams (within word boundaries), sublinear term frequency, and a
linear SVM whose regularisation ``C`` is chosen on the validation split, not left at a default.
``evaluate`` trains it on the fine-tune's own train split and scores it on the same test rows
(``classical_*``); ``benchmarks/quality.py`` does the same over several seeds. Trains in seconds
on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def features() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
        ]
    )


def f1_of(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], positive_label: str) -> float:
    from hf_finetune.tasks.text_classification.measures import classification_metrics

    return classification_metrics(y_true, y_pred, labels, positive_label)["f1"]


def fit(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    val_texts: Sequence[str],
    val_labels: Sequence[str],
    positive_label: str,
) -> tuple[Any, float]:
    """The pipeline (features + ``LinearSVC``) refitted on the train split with the ``C`` of best
    validation F1 (ties: the smaller ``C``, the simpler model), and that ``C``."""
    from sklearn.pipeline import Pipeline
    from sklearn.svm import LinearSVC

    labels = sorted(set(train_labels) | set(val_labels))
    vectors = features().fit(train_texts)
    x_train, x_val = vectors.transform(train_texts), vectors.transform(val_texts)
    scores = []
    for c in C_GRID:
        svm = LinearSVC(C=c).fit(x_train, train_labels)
        scores.append((f1_of(val_labels, svm.predict(x_val), labels, positive_label), -c))
    best_c = -max(scores)[1]
    model = Pipeline([("features", vectors), ("svm", LinearSVC(C=best_c).fit(x_train, train_labels))])
    return model, best_c
