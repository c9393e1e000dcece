"""A bag-of-words baseline for text classification: TF-IDF features and logistic regression
(scikit-learn, the ``bench`` extra), scored with the classify task's own metrics."""

from __future__ import annotations

import time

import numpy as np

from train.tasks import classification_metrics


def tfidf_logistic_regression(train_texts, train_labels, test_texts, test_labels, labels) -> dict:
    """Fit on the training rows, report accuracy, macro-F1 and per-class counts on the test rows.

    Word unigrams and bigrams seen in at least two training texts, sublinear term frequencies,
    L2-regularised logistic regression (C = 1): scikit-learn's defaults otherwise.
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ImportError("the bag-of-words baseline needs scikit-learn: pip install -e '.[bench]'") from None
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform(train_texts)
    index = {label: i for i, label in enumerate(labels)}
    model = LogisticRegression(max_iter=2000).fit(features, [index[str(y)] for y in train_labels])
    predicted = model.predict(vectorizer.transform(test_texts))
    confusion = np.zeros((len(labels), len(labels)))
    np.add.at(confusion, ([index[str(y)] for y in test_labels], predicted), 1)
    return {**classification_metrics(confusion, labels), "seconds": time.perf_counter() - start,
            "features": len(vectorizer.vocabulary_)}
