"""Pipelines and artifacts: deterministic fits, the single-row fast path equal to scikit-learn, hash-checked
loading."""

import numpy as np
import pytest

from learning.errors import ArtifactIntegrityError
from learning.modeling import CompiledTrees, TrainedModel, dump_artifact, load_artifact, make_pipeline


def data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    x[rng.random((n, 6)) < 0.05] = np.nan  # gaps: NaN must follow the side each split learned
    y = ((np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) + rng.normal(0, 1, n)) > 0.3).astype(float)
    return x, y


def test_single_row_fast_path_equals_scikit_learn_exactly():
    x, y = data()
    pipeline = make_pipeline("hgb", {"max_iter": 60}).fit(x, y)
    model = TrainedModel(pipeline, [f"f{i}" for i in range(6)], "hgb", 24, 60)
    compiled = CompiledTrees(pipeline)
    assert compiled.usable
    expected = pipeline.predict_proba(x[:400])[:, 1]
    got = np.array([model.predict(x[i : i + 1])[0] for i in range(400)])
    assert np.array_equal(got, expected)
    assert np.array_equal(model.predict(x[:400]), expected)  # batches go through scikit-learn itself


def test_fits_are_deterministic():
    x, y = data(seed=1)
    for kind in ("hgb", "logistic"):
        first = make_pipeline(kind, {"max_iter": 40} if kind == "hgb" else None).fit(x, y)
        second = make_pipeline(kind, {"max_iter": 40} if kind == "hgb" else None).fit(x, y)
        assert np.array_equal(first.predict_proba(x), second.predict_proba(x))


def test_artifact_round_trip_and_refusal_of_altered_bytes():
    x, y = data(seed=2)
    model = TrainedModel(make_pipeline("logistic").fit(x, y), [f"f{i}" for i in range(6)], "logistic", 24, 60)
    data_bytes, sha = dump_artifact(model)
    loaded = load_artifact(data_bytes, expected_sha256=sha)
    assert np.array_equal(loaded.predict(x[:50]), model.predict(x[:50]))
    with pytest.raises(ArtifactIntegrityError, match="was altered or corrupted after registration"):
        load_artifact(data_bytes + b"x", expected_sha256=sha)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="model kind 'forest' is not one of hgb, logistic"):
        make_pipeline("forest")
