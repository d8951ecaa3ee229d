"""The forest under hostile input: edited node arrays, bins past their histograms and absurd
thread counts (each run in its own process, so a regression that crashes shows as a failed test,
not a dead test run), weights and labels that used to give silent NaN, and corrupt model files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from modelkernels.kernels.forest import RandomForestClassifier
from modelkernels.kernels.native import native_unavailable

needs_native = pytest.mark.skipif(native_unavailable() is not None, reason=str(native_unavailable()))
RNG = np.random.default_rng(0)
X = RNG.standard_normal((60, 4))
Y = (X[:, 0] + 0.3 * RNG.standard_normal(60) > 0).astype(int)

SETUP = """
import numpy as np
from modelkernels.kernels.forest import RandomForestClassifier, ops
rng = np.random.default_rng(0)
X = rng.standard_normal((60, 4)); y = (X[:, 0] > 0).astype(int)
"""


def _run(body: str) -> str:
    """Run SETUP + body in a fresh interpreter; the process must exit cleanly."""
    out = subprocess.run([sys.executable, "-c", SETUP + textwrap.dedent(body)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr[-3000:]}"
    return out.stdout


EDITS = [  # (edit of a fitted clf, the error it must raise): issue 13's crash reproducers
    ('i = np.flatnonzero(clf.nodes_["feature"] >= 0)[0]; clf.nodes_["child"][i] = 2**31 - 1',
     "child[0] = 2147483647: the children of split node 0"),
    ("clf.leaf_offsets_[0] = -2", "leaf_offsets[0] = -2, expected 0"),
    ("clf.node_offsets_[0] = -10**7", "node_offsets[0] = -10000000, expected 0"),
    ('clf.nodes_["feature"][0] = 2**31 - 1', "splits on feature 2147483647"),
]


@needs_native
def test_crash_reproducers_raise_in_a_fresh_process() -> None:
    """Edited trees (through predict and the op), bins past n_bins straight into C++, and thread
    counts of 1e5 and 2**40: one process for all, which must exit cleanly."""
    edits = "\n".join(f"""
        clf = RandomForestClassifier(n_estimators=2, random_state=0).fit(X, y)
        {edit}
        for call in (lambda: clf.predict(X), lambda: ops.forest_predict_proba(X.astype(np.float32), *clf._arrays())):
            try:
                call()
            except ValueError as e:
                print(e)""" for edit, _ in EDITS)
    out = _run(edits + """
        from modelkernels.kernels.native import native
        d = ops._forest_inputs(60, 4, 2, 2, 0)
        hist = ops.binned(d["X_cols"], 4)
        hist["bins"][1, 5] = 200
        try:
            native().build_forest(d["X_cols"], d["y"], d["sample_weight"], d["counts"], d["class_weight"],
                                  d["seeds"], 2, 0, -1, 2, 1, 0.0, 0.0, 0.0, 2, 2, **hist)
        except ValueError as e:
            print(e)
        fresh = RandomForestClassifier(n_estimators=2, random_state=0, n_jobs=100000).fit(X, y)
        print("shape", fresh.predict_proba(np.zeros((1_000_000, 4))).shape)
        fresh.set_params(n_jobs=2**40)
        print("shape", fresh.predict_proba(X).shape)
        print("shape", RandomForestClassifier(3, n_jobs=2**40, random_state=0).fit(X, y).predict(X[:2]).shape)
    """)
    for _, match in EDITS:
        assert out.count(match) == 2, out
    assert "bins[1, 5] = 200: feature 1 has n_bins = 4, so its bins must be in [0, 4)" in out
    assert [line for line in out.splitlines() if line.startswith("shape")] == [
        "shape (1000000, 2)", "shape (60, 2)", "shape (2,)"]


@needs_native
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no thread to start")
def test_a_failed_thread_start_is_an_exception() -> None:
    """Address space capped 1 MiB above what the process maps: the second thread's 8 MiB stack
    cannot be mapped, and the build reports that as an error instead of calling std::terminate."""
    out = _run("""
        import resource
        from modelkernels.kernels.native import native
        d = ops._forest_inputs(50, 3, 2, 4, 0)
        args = (d["X_cols"], d["y"], d["sample_weight"], d["counts"], d["class_weight"], d["seeds"],
                2, 0, -1, 2, 1, 0.0, 0.0, 0.0, 1, 2)
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 20), resource.RLIM_INFINITY))
        try:
            native().build_forest(*args)
            print("ran")
        except RuntimeError as e:
            print("raised", e)
    """)
    assert out.startswith("raised could not start thread 2 of 2"), out


@pytest.mark.parametrize("sample_weight", [-1.0, 0, 0.0, float("nan"), float("inf")])
def test_scalar_sample_weight_must_be_positive_and_finite(sample_weight: float) -> None:
    with pytest.raises(ValueError, match=f"sample_weight={sample_weight!r}: a scalar sample weight must be a finite"):
        RandomForestClassifier(3, random_state=0).fit(X, Y, sample_weight=sample_weight)


@pytest.mark.parametrize("weight", [-1, float("nan"), float("inf"), "heavy"])
def test_class_weight_values_must_be_finite_and_non_negative(weight: object) -> None:
    with pytest.raises(ValueError, match=r"class_weight\[0\] = .*: class weights must be finite numbers >= 0"):
        RandomForestClassifier(3, class_weight={0: weight}, random_state=0).fit(X, Y)


def test_all_zero_effective_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="every sample with weight 0"):
        RandomForestClassifier(3, class_weight={0: 0, 1: 0}, random_state=0).fit(X, Y)


@pytest.mark.parametrize("scale", [2.0**1000, 2.0**-1000, 2.0**600])
def test_extreme_sample_weights_give_the_unscaled_forest(scale: float) -> None:
    """fit rescales weights by a power of two (exact): the same trees as weight 1, never NaN."""
    base = RandomForestClassifier(4, random_state=0).fit(X, Y)
    big = RandomForestClassifier(4, random_state=0).fit(X, Y, sample_weight=np.full(60, scale))
    np.testing.assert_array_equal(big.predict_proba(X), base.predict_proba(X))
    np.testing.assert_array_equal(big.nodes_, base.nodes_)


@pytest.mark.parametrize("scale", [1e308, 1e-300])
def test_weights_near_the_float_limits_give_finite_probabilities(scale: float) -> None:
    w = np.full(60, scale)
    w[::7] *= 0.5
    proba = RandomForestClassifier(4, random_state=0).fit(X, Y, sample_weight=w).predict_proba(X)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_infinite_labels_are_refused() -> None:
    y = Y.astype(float)
    y[3] = np.inf
    with pytest.raises(ValueError, match="Input y contains infinity"):
        RandomForestClassifier(3).fit(X, y)


def _saved(tmp_path: Path) -> dict[str, np.ndarray]:
    RandomForestClassifier(3, random_state=0).fit(X, Y).save(tmp_path / "f.npz")
    with np.load(tmp_path / "f.npz") as z:
        return dict(z)


@pytest.mark.parametrize("bad,match", [(np.nan, "row 0 = .*finite numbers in \\[0, 1\\]"),
                                       (-1e30, "row 0 = .*class fractions"), (1.5, "row 0 = ")])
def test_load_refuses_leaf_values_outside_fractions(tmp_path: Path, bad: float, match: str) -> None:
    arrays = _saved(tmp_path)
    arrays["value"] = arrays["value"].copy()
    arrays["value"][0, 0] = bad
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        RandomForestClassifier.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("n_features,match", [(40, "does not match header n_features_in = 40"),
                                              (0, "n_features_in = 0; expected an int >= 1"),
                                              ("4", "n_features_in = '4'")])
def test_load_refuses_a_header_that_disagrees_with_the_arrays(tmp_path: Path, n_features: object,
                                                             match: str) -> None:
    arrays = _saved(tmp_path)
    header = json.loads(str(arrays["header"]))
    header["n_features_in"] = n_features
    arrays["header"] = np.array(json.dumps(header))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        RandomForestClassifier.load(tmp_path / "bad.npz")


def test_load_refuses_nan_thresholds(tmp_path: Path) -> None:
    arrays = _saved(tmp_path)
    arrays["threshold"] = arrays["threshold"].copy()
    arrays["threshold"][0] = np.nan
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="'threshold' has NaN at node 0"):
        RandomForestClassifier.load(tmp_path / "bad.npz")
