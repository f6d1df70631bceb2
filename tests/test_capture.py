"""`scan --activations` loads the whole model once, beside the probe: the capture session is begun on a thread as
soon as the candidates are known (scan.capture.Capture, find_layers' `confirming`) and is the one the run takes;
one begun on other names is let go before the next is built (the weights are never held twice); the float16
what-ifs run on threads beside the next layers and land on their own layers. Real models, real ORT sessions:
open_capture and the probe are wrapped to see when they are called, never replaced."""
from __future__ import annotations

import weakref

import numpy as np
import onnx
import pytest

import corpus
from normonnx.core.errors import BadInput
from normonnx.features.scan import capture as capture_mod
from normonnx.features.scan import scan
from normonnx.features.scan.activations import check_activations
from normonnx.features.scan.float16 import WhatIfs, float16_what_if
from normonnx.features.scan.capture import Capture


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("cap") / "decoder.onnx"
    corpus.external_decoder(path, hidden=64, layers=2, vocab=128, seq=16)
    return path  # five decomposed LayerNorms, the last one E[x^2]-E[x]^2


@pytest.fixture
def opened(monkeypatch):
    """Every open_capture call: (names asked for, a weak reference to each session that was live then)."""
    calls, sessions = [], []
    real = capture_mod.open_capture

    def spy(p, names, work):
        calls.append((set(names), [r for r in sessions if r() is not None]))
        sess, provider = real(p, names, work)
        sessions.append(weakref.ref(sess))
        return sess, provider

    monkeypatch.setattr(capture_mod, "open_capture", spy)
    return calls


def test_the_session_begun_beside_the_probe_is_the_one_the_run_takes(decoder, opened, monkeypatch):
    import normonnx.engine.probe as probe

    begun_before_measuring = []
    real_measure = probe.measure

    def measure(*args, **kw):
        begun_before_measuring.append(cap.started)
        return real_measure(*args, **kw)

    monkeypatch.setattr(probe, "measure", measure)
    with Capture(decoder) as cap:
        rep = scan(decoder, check_fusion=False, confirming=cap.start)
        act = check_activations(decoder, found=(rep.norms, rep.left_out), capture=cap, what_if=False)
    assert len(begun_before_measuring) == 5 and all(begun_before_measuring)
    assert len(opened) == 1 and {lc.norm.output for lc in act.layers} <= opened[0][0]
    assert [lc.status for lc in act.layers] == ["pass"] * 5 and act.exit_code == 0


def _view_and_norms(path):
    seen = {}
    scan(path, check_fusion=False, confirming=lambda view, norms: seen.update(view=view, norms=norms))
    return seen["view"], seen["norms"]


def test_a_session_begun_on_other_names_is_let_go_before_the_next_is_built(decoder, opened):
    view, norms = _view_and_norms(decoder)
    wanted = capture_mod.captured_names(view, norms)
    with Capture(decoder) as cap:
        cap.start(view, norms[:1])  # one layer's values: the run wants five
        sess, _ = cap.session(wanted)
        assert set(wanted) <= {o.name for o in sess.get_outputs()}
    (first, live1), (second, live2) = opened
    assert first < second == set(wanted)
    assert live2 == []  # the first session was gone before the second was built


@pytest.mark.parametrize("asked, builds", [("fewer", 2), ("same", 1)])
def test_an_early_session_refused_on_a_name_the_run_does_not_need_is_rebuilt_without_it(decoder, opened,
                                                                                           monkeypatch, asked, builds):
    """A candidate the probe then leaves out may be what ORT refused: the run's own names are tried alone; refused
    on those too, the one-line reason is the answer."""
    view, norms = _view_and_norms(decoder)
    wanted = capture_mod.captured_names(view, norms)
    real = capture_mod.captured_names
    monkeypatch.setattr(capture_mod, "captured_names",
                        lambda v, n: {**real(v, n), "no_such_value": onnx.TensorProto.FLOAT})
    with Capture(decoder) as cap:
        cap.start(view, norms)
        if asked == "fewer":
            sess, _ = cap.session(wanted)
            assert "no_such_value" not in {o.name for o in sess.get_outputs()}
        else:
            with pytest.raises(BadInput, match="ORT cannot load .* with its norms' values as outputs"):
                cap.session({**wanted, "no_such_value": onnx.TensorProto.FLOAT})
    assert len(opened) == builds


def test_what_ifs_beside_the_checks_land_on_their_own_layers(decoder, tmp_path, monkeypatch):
    """The float16 what-ifs on threads give each layer what the what-if run alone in the caller's thread gives it:
    the decoder's five layers each their own error (all different, so a mix-up shows), the massive-activations
    block's converted LayerNorm its failure."""
    massive = corpus.export_block(corpus.MassiveActivationsBlock(), (2, 5, 32), tmp_path / "massive.onnx", 14,
                                  "torchscript")
    beside = [check_activations(m) for m in (decoder, massive)]

    def alone(self, lc, *args):
        lc.fp16 = float16_what_if(*args)

    monkeypatch.setattr(WhatIfs, "submit", alone)
    inline = [check_activations(m) for m in (decoder, massive)]
    got = [[lc.fp16 for lc in r.layers] for r in beside]
    assert got == [[lc.fp16 for lc in r.layers] for r in inline]
    errors = [f.converted.max_abs_err for f in got[0]]
    assert len(set(errors)) == 5 and np.isfinite(errors).all()
    assert got[1][0].converted.status == "fail" and got[1][0].fp32_statistics.status == "pass"
