"""scikit-learn pipelines and their artifacts. Plain Python, no Django.

Two kinds: ``hgb`` (HistGradientBoostingClassifier: handles NaN, no scaling) and ``logistic`` (a
standardised logistic regression: the simple baseline). Both are deterministic for given data: early
stopping is off and the random state fixed.

An artifact is the joblib serialisation of :class:`TrainedModel`; its SHA-256 is recorded when it is
registered and checked before it is ever unpickled (:func:`load_artifact`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import weakref
from dataclasses import dataclass, field
from typing import Any

import joblib
import numpy as np
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import ThreadpoolController

from learning.errors import ArtifactIntegrityError

KINDS = ("hgb", "logistic")
ARTIFACT_FORMAT = 1

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "hgb": {
        "max_iter": 150,
        "learning_rate": 0.05,
        "max_leaf_nodes": 15,
        "min_samples_leaf": 200,
        "l2_regularization": 1.0,
    },
    "logistic": {"C": 0.1, "max_iter": 1000},
}


def make_pipeline(kind: str, params: dict[str, Any] | None = None, *, random_state: int = 0) -> Pipeline:
    if kind not in KINDS:
        raise ValueError(f"model kind {kind!r} is not one of {', '.join(KINDS)}")
    settings = {**DEFAULT_PARAMS[kind], **(params or {})}
    if kind == "hgb":
        model = HistGradientBoostingClassifier(early_stopping=False, random_state=random_state, **settings)
        return Pipeline([("model", model)])
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(random_state=random_state, **settings)),
        ]
    )


def positive_probability(pipeline: Pipeline, matrix: np.ndarray) -> np.ndarray:
    """P(class 1) per row. A model trained on one class only answers that class's certainty."""
    classes = list(pipeline.classes_)
    if classes == [0.0, 1.0] or classes == [0, 1]:
        return pipeline.predict_proba(matrix)[:, 1]
    return np.full(len(matrix), float(classes[0] == 1))


@dataclass
class TrainedModel:
    """What an artifact holds: the fitted pipeline and what is needed to feed it."""

    pipeline: Pipeline
    features: list[str]
    kind: str
    horizon: int
    timeframe: int
    meta: dict[str, Any] = field(default_factory=dict)
    format: int = ARTIFACT_FORMAT

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """P(class 1) per row. One row of a gradient-boosting model (live inference) goes through
        :class:`CompiledTrees`; anything else through scikit-learn on one OpenMP thread (threads only add
        start-up cost to small predictions, and spin badly when the cores are busy)."""
        if self.kind == "hgb" and len(matrix) == 1:
            compiled = _COMPILED.get(self.pipeline)
            if compiled is None:
                compiled = _COMPILED[self.pipeline] = CompiledTrees(self.pipeline)
            if compiled.usable:
                return np.array([compiled.probability(np.asarray(matrix[0], dtype=float))])
        with _threads().limit(limits=1, user_api="openmp"):
            return positive_probability(self.pipeline, matrix)


class CompiledTrees:
    """A fitted binary HistGradientBoostingClassifier's trees as flat arrays, walked for one row in a
    few vectorised steps (all trees at once), instead of one scikit-learn call per tree. The decisions
    are scikit-learn's own: a numerical split sends ``x <= threshold`` left and NaN to the side the node
    learned; the raw score is the baseline plus the leaves' values added in tree order, through the same
    logistic link. ``tests/learning/test_modeling.py`` checks it equals ``predict_proba`` exactly."""

    def __init__(self, pipeline: Pipeline) -> None:
        classifier = pipeline.steps[-1][1]
        trees = [predictors[0] for predictors in getattr(classifier, "_predictors", [])]
        self.usable = (
            len(pipeline.steps) == 1
            and isinstance(classifier, HistGradientBoostingClassifier)
            and list(classifier.classes_) in ([0, 1], [0.0, 1.0])
            and bool(trees)
            and not any(tree.nodes["is_categorical"].any() for tree in trees)
        )
        if not self.usable:
            return
        sizes = np.array([len(tree.nodes) for tree in trees])
        offsets = np.r_[0, np.cumsum(sizes)[:-1]]
        nodes = np.concatenate([tree.nodes for tree in trees])
        shift = np.repeat(offsets, sizes)
        self.roots = offsets
        self.feature = nodes["feature_idx"].astype(np.intp)
        self.threshold = nodes["num_threshold"]
        self.missing_left = nodes["missing_go_to_left"].astype(bool)
        self.left = nodes["left"].astype(np.intp) + shift
        self.right = nodes["right"].astype(np.intp) + shift
        self.leaf = nodes["is_leaf"].astype(bool)
        self.value = nodes["value"]
        self.depth = int(nodes["depth"].max())
        self.baseline = float(classifier._baseline_prediction.ravel()[0])

    def probability(self, row: np.ndarray) -> float:
        current = self.roots
        for _ in range(self.depth):
            x = row[self.feature[current]]
            go_left = np.where(np.isnan(x), self.missing_left[current], x <= self.threshold[current])
            current = np.where(
                self.leaf[current], current, np.where(go_left, self.left[current], self.right[current])
            )
        raw = np.cumsum(np.r_[self.baseline, self.value[current]])[-1]
        return float(expit(raw))


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@functools.cache
def _threads() -> ThreadpoolController:
    return ThreadpoolController()


def dump_artifact(model: TrainedModel) -> tuple[bytes, str]:
    """The artifact's bytes and their SHA-256 (hex)."""
    buffer = io.BytesIO()
    joblib.dump(model, buffer, compress=3)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def load_artifact(data: bytes, *, expected_sha256: str, name: str = "artifact") -> TrainedModel:
    """Unpickle an artifact only after its bytes match ``expected_sha256``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"{name}: SHA-256 {actual[:16]}… does not match the registered {expected_sha256[:16]}…; the file "
            "was altered or corrupted after registration and will not be loaded"
        )
    model = joblib.load(io.BytesIO(data))
    if not isinstance(model, TrainedModel) or model.format != ARTIFACT_FORMAT:
        raise ArtifactIntegrityError(f"{name}: not an Aether model artifact of format {ARTIFACT_FORMAT}")
    return model
