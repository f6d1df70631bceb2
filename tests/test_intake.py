"""The world's ONNX: norms as other toolchains write them, found and validated by what they compute.

Two corpora, both generated (tests/intake/, format in ground_truth.py), each file with the norms it must hold:
- local: torch exports put through ORT's static (QDQ) and dynamic int8 quantization, both float16 converters
  (onnxconverter-common; onnxruntime.transformers.float16, keep_io_types on and off: its graphs out of
  topological order), onnxslim, onnxsim, onnxoptimizer, ORT's transformer optimizer, and hand-made graphs
  (two GroupNormalization-21 in a row sharing parameters, a float16 LayerNorm island in a float32 model, a
  written-out LayerNorm after a Reshape): built in a fixture (the test extras carry the post-processors);
- foreign: Keras 3 and tf.keras through tf2onnx (opsets 13/17/18, optimizer on and off, dynamic batch) and
  flax.nnx through jax2onnx (opsets 18/23): TensorFlow and JAX need a venv of their own, so .ci/run builds
  them there (tests/intake/requirements-foreign.txt) and points NORMONNX_INTAKE_FOREIGN at the folder; here
  they skip without it unless NORMONNX_INTAKE_REQUIRED=1.

Every expected norm must be found with its kind, eps and groups, nothing else found, no file ORT runs
refused, every found layer checked (pass or fail, never "not checked"), and the spec normonnx derives for a
written-out norm must be the module's (scale and shift included): a FAIL is then the layer's own numerics.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

INTAKE = Path(__file__).parent / "intake"
EPS_RTOL = 0.02  # a float16 graph stores eps rounded to float16 (1e-6 -> 1.013e-6): that is what it computes


def _manifest(folder: Path) -> list[dict]:
    return json.loads((folder / "manifest.json").read_text())["files"]


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    import sys

    sys.path.insert(0, str(INTAKE))
    import build_local

    out = tmp_path_factory.mktemp("intake-local")
    build_local.build(out)
    return out


def _foreign() -> Path | None:
    where = os.environ.get("NORMONNX_INTAKE_FOREIGN")
    if where and (Path(where) / "manifest.json").is_file():
        return Path(where)
    if os.environ.get("NORMONNX_INTAKE_REQUIRED") == "1":
        pytest.fail("NORMONNX_INTAKE_REQUIRED=1 but NORMONNX_INTAKE_FOREIGN names no built corpus (.ci/run builds it)")
    pytest.skip("the TensorFlow/JAX corpus is built in a venv of its own: set NORMONNX_INTAKE_FOREIGN "
                "(python tests/intake/build_foreign.py DIR, with tests/intake/requirements-foreign.txt installed)")


def _pairs(expected: list[dict], found: list) -> tuple[list, list, list]:
    """(matched (expected, found) pairs, missed expected, unexpected found): by kind, groups and eps."""
    left = list(found)
    pairs, missed = [], []
    for e in expected:
        same = [f for f in left if f.kind == e["kind"] and (e.get("groups") or None) == (f.groups or None)
                and f.eps is not None and abs(f.eps - e["eps"]) <= EPS_RTOL * e["eps"]]
        if same:
            pairs.append((e, same[0]))
            left.remove(same[0])
        else:
            missed.append(e)
    return pairs, missed, left


def _judge_corpus(folder: Path) -> dict:
    from normonnx.features.scan import scan

    totals = {"expected": 0, "found": 0, "matched": 0, "refused": [], "missed": [], "unexpected": [],
              "not_checked": [], "wrong_spec": [], "unidentified_on_norms": []}
    for entry in _manifest(folder):
        path = folder / entry["file"]
        try:
            rep = scan(path, validate=True, inputs=["normal", "constant"])
        except Exception as e:  # a file ORT runs (every file counted was run on ORT when built)
            totals["refused"].append(f"{entry['file']}: {type(e).__name__}: {e}")
            continue
        pairs, missed, unexpected = _pairs(entry["expected"], rep.norms)
        totals["expected"] += len(entry["expected"])
        totals["found"] += len(rep.norms)
        totals["matched"] += len(pairs)
        totals["missed"] += [f"{entry['file']}: {e['kind']} eps={e['eps']}" for e in missed]
        totals["unexpected"] += [f"{entry['file']}: {f.kind} {f.form} eps={f.eps}" for f in unexpected]
        if entry["expected"] and rep.unidentified:
            totals["unidentified_on_norms"] += [f"{entry['file']}: {x.node}: {x.reason}" for x in rep.unidentified]
        for i, f in enumerate(rep.norms):
            v = rep.validations.get(i)
            if v is None or v.status not in ("pass", "fail"):
                totals["not_checked"].append(f"{entry['file']}: {f.kind} {f.form}: {v.validation if v else '-'}")
        totals["wrong_spec"] += [f"{entry['file']}: {why}" for e, f in pairs if (why := _spec_differs(e, f))]
    return totals


def _spec_differs(e: dict, f) -> str | None:
    """Why the spec normonnx derived for a written-out norm is not the module's, or None."""
    d = f.derived
    if d is None:
        return None
    if d.kind != e["kind"]:
        return f"measured {d.kind}, the module is {e['kind']}"
    for key in ("weight", "bias"):
        want = e.get(key)
        if want is None or (key == "bias" and e["kind"] == "rms"):
            continue
        got = d.params.get(key)
        if got is None:
            if np.allclose(want, 1.0 if key == "weight" else 0.0, atol=1e-3):
                continue  # an identity scale or a zero shift: no parameter to compare
            return f"no {key} measured; the module's is {np.asarray(want)[:4]}..."
        # the graph holds float16 or int8 (Q/DQ) parameters: what it computes is the module's rounded to them
        tol = 2e-2 if "float16" in (d.dtype, e.get("stats_dtype")) or any("Q/DQ" in n for n in f.notes) else 1e-4
        if np.asarray(got).size != np.asarray(want).size or not np.allclose(np.reshape(got, -1), want, rtol=tol,
                                                                             atol=tol):
            return f"{key} measured {np.reshape(got, -1)[:4]}..., the module's {np.asarray(want)[:4]}..."
    return None


def _assert_corpus(totals: dict) -> None:
    recall = totals["matched"] / max(totals["expected"], 1)
    precision = totals["matched"] / max(totals["found"], 1)
    detail = "\n".join(f"{k}: {v[:8]}" for k, v in totals.items() if isinstance(v, list) and v)
    assert recall >= 0.99 and precision >= 0.99, f"recall {recall:.1%}, precision {precision:.1%}\n{detail}"
    assert not totals["refused"], detail
    assert not totals["not_checked"], detail
    assert not totals["wrong_spec"], detail
    assert not totals["unidentified_on_norms"], detail


def test_local_corpus_is_found_and_validated(local):
    _assert_corpus(_judge_corpus(local))


def test_foreign_corpus_is_found_and_validated():
    _assert_corpus(_judge_corpus(_foreign()))


def test_a_file_out_of_topological_order_is_scanned_as_ort_runs_it(local):
    """ORT's float16 converter with keep_io_types writes the input Casts after the nodes that read them: ORT
    sorts and runs such a graph, so scan does too, and says so."""
    from normonnx.features.scan import scan

    files = [e["file"] for e in _manifest(local) if e["producer"] == "fp16-ort-transformers"]
    assert files
    rep = scan(local / files[0], validate=True, inputs=["normal"])
    assert rep.norms and any("topological order" in n for n in rep.notes), rep.notes
