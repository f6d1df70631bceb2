"""The timing harness: structure and sanity only (ordered percentiles, same-run ratios, IOBinding,
provider). Never a wall-clock threshold: machines here are shared and noisy."""

import pytest

from normonnx import BadInput, NormSpec
from normonnx.engine.bench import BenchRecord, bench_spec, benchmark
from normonnx.engine.runtimes import RunOptions, SessionConfig
from normonnx.core.timing import TimingOptions


@pytest.fixture(scope="module")
def report():
    spec = NormSpec.make("gn", shape="2x8x16x16", groups=4)
    return benchmark(spec, run=RunOptions.on("cpu", config=SessionConfig(threads=1)),
                     timing=TimingOptions(warmup=1, min_time=0.0, rounds=5))


def test_records_cover_baselines_and_every_variant(report):
    forms = [r.form for r in report.records]
    assert forms == ["copy", "torch", "native", "decomposed", "instance-trick", "layernorm-trick", "shifted",
                     "contrib", "contrib-nhwc"]
    assert all(isinstance(r, BenchRecord) and r.error is None for r in report.records)


def test_a_variant_without_a_cpu_kernel_is_unsupported_with_why_not_timed(report):
    contrib = [r for r in report.records if r.form.startswith("contrib")]
    assert contrib and all("CUDA" in r.unsupported and r.p50_ms is None and r.error is None for r in contrib)
    assert all(r.unsupported is None for r in report.records if not r.form.startswith("contrib"))


def _timed(report):
    return [r for r in report.records if r.unsupported is None]


def test_ratios_come_from_the_same_run(report):
    by = {r.form: r for r in report.records}
    assert by["copy"].x_copy == 1.0 and by["torch"].x_torch == 1.0
    for r in _timed(report):
        assert r.ci_low <= r.x_copy <= r.ci_high and r.x_torch_ci_low <= r.x_torch <= r.x_torch_ci_high
        assert r.rounds == 5 and r.batch >= 1 and r.stable in (True, False)
        assert r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
        assert r.runs >= 5  # every call of every round
    # GB/s counts x read once and y written once: the bytes of the actual float32 tensor, twice
    import numpy as np

    moved = 2 * np.zeros((2, 8, 16, 16), np.float32).nbytes
    for r in _timed(report):
        assert r.gbps * 1e9 * r.p50_ms / 1e3 == pytest.approx(moved)


def test_variants_use_iobinding_on_the_requested_provider(report):
    for r in _timed(report):
        if r.form in ("copy", "torch"):
            assert not r.io_binding and r.ort_provider is None
        else:
            assert r.io_binding and r.ort_provider == "CPUExecutionProvider" and r.opt_level == "all"
            assert r.threads == 1


def test_fastest_is_at_most_one_validated_variant_with_a_trustworthy_timing(report):
    fastest = [r for r in report.records if r.fastest]
    candidates = [r for r in report.records if r.form not in ("copy", "torch") and r.check == "pass" and not r.implausible]
    quickest = min(candidates, key=lambda r: r.x_copy)
    # marked only when the quickest passing form's own timing is stable (a steadier slower one is not "fastest")
    assert [r.form for r in fastest] == ([quickest.form] if quickest.stable else [])


def test_bench_spec_defaults_to_the_standard_shapes():
    assert bench_spec("ln").shape == (8, 512, 768)
    assert bench_spec("gn").groups == 32 and bench_spec("gn").shape == (8, 320, 64, 64)


def test_bench_rejects_bad_input():
    with pytest.raises(BadInput, match="needs opset >= 17"):
        benchmark(NormSpec.make("ln"), ["native"], opset=13)
    with pytest.raises(BadInput, match="valid runtimes are cpu, cuda"):
        benchmark(NormSpec.make("ln"), run=RunOptions.on("tpu"))
    with pytest.raises(BadInput, match="bfloat16"):
        benchmark(NormSpec.make("ln", dtype="bfloat16"))


def test_a_form_that_cannot_be_judged_is_said_so_and_the_others_go_on(monkeypatch):
    """One form's file refused by validation (on the first GPU run: a contrib GroupNorm file checked on the
    wrong provider) used to end the whole benchmark; now that form's row says why and the rest are timed."""
    import normonnx.engine.validate as validate_mod

    real = validate_mod.validate

    def refusing(*args, model=None, **kw):
        if str(model).endswith("decomposed.onnx"):
            raise BadInput(f"{model} cannot be loaded by ONNX Runtime: planted")
        return real(*args, model=model, **kw)

    monkeypatch.setattr(validate_mod, "validate", refusing)
    rep = benchmark(NormSpec.make("ln", shape="2x4x16"), run=RunOptions.on("cpu", config=SessionConfig(threads=1)),
                    timing=TimingOptions(warmup=1, min_time=0.0, rounds=3))
    by = {r.form: r for r in rep.records}
    assert by["decomposed"].check == "not checked" and "planted" in by["decomposed"].validation
    assert by["native"].check == "pass" and by["native"].p50_ms is not None


def test_bench_output_says_its_valid_column_covers_normal_inputs_only():
    """bench judges correctness on normal inputs only (to time forms that compute a norm); its output
    says so in text and JSON, so nobody reads 'valid: pass' as the stress suites' verdict."""
    import json

    from conftest import run_cli

    args = ["bench", "--norm", "ln", "--shape", "2,16,64", "--variant", "native", "--min-time", "0", "--rounds", "3",
            "--warmup", "0"]
    text = run_cli(*args)
    assert text.returncode == 0, text.stderr
    assert "valid: checked on normal inputs only" in text.stdout and "normonnx validate's verdict" in text.stdout
    doc = json.loads(run_cli(*args, "--json").stdout)
    assert doc["checked"].startswith("valid: normal inputs only")
