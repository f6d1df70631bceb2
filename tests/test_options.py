"""The option types the orchestrators take (validate, sweep, fix, benchmark): small, frozen, a single
name given as a string is that name, and each option reaches the engine (a wrong one fails there)."""
from __future__ import annotations

import dataclasses

import pytest

import normonnx
from normonnx import BadInput, NormSpec
from normonnx.exporting.export import ExportOptions
from normonnx.engine.inputs import CheckOptions
from normonnx.repair.fixer import FixOptions, ProofOptions
from normonnx.engine.runtimes import RunOptions
from normonnx.features.sweep import BenchOptions, SweepOptions
from normonnx.core.timing import TimingOptions
from normonnx.engine.validate import validate

NAMES = [(RunOptions, "runtimes"), (CheckOptions, "inputs"), (FixOptions, "rules"), (FixOptions, "skip_rules"),
         (ProofOptions, "runtimes"), (ProofOptions, "inputs")]


@pytest.mark.parametrize("cls, field", NAMES, ids=[f"{c.__name__}.{f}" for c, f in NAMES])
def test_names_are_a_tuple_and_one_string_is_one_name(cls, field):
    assert getattr(cls(**{field: "cpu"}), field) == ("cpu",)
    assert getattr(cls(**{field: ["cpu", "cuda"]}), field) == ("cpu", "cuda")
    assert getattr(cls(), field) is None


@pytest.mark.parametrize("obj", [ExportOptions(), RunOptions(), CheckOptions(), FixOptions(), ProofOptions(),
                                 SweepOptions(), BenchOptions(), TimingOptions()], ids=lambda o: type(o).__name__)
def test_options_are_frozen(obj):
    field = dataclasses.fields(obj)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field, None)


def test_each_option_reaches_validate():
    """GroupNormalization-21 runs as ORT's E[x^2]-E[x]^2 body: NaN at offset 1e4. The export options pick
    that form, the run options the runtime, the check options the suite (and a NaN tolerance is refused)."""
    spec = NormSpec.make("gn", groups=4)
    bad = validate(spec, export=ExportOptions(variant="native", opset=21), run=RunOptions("cpu"),
                   check=CheckOptions("offset"))
    assert bad.verdict.status != "pass" and {r.runtime for r in bad.results} == {"cpu"}
    assert {r.inputs.split(":")[0] for r in bad.results} == {"offset"}
    good = validate(spec, export=ExportOptions(variant="instance-trick", opset=18), run=RunOptions("cpu"),
                    check=CheckOptions("offset"))
    assert good.verdict.status == "pass" and good.model["opset"] == 18
    with pytest.raises(BadInput, match="tolerances must be finite"):
        validate(spec, check=CheckOptions("offset", atol=float("nan")))


def test_wrong_options_are_one_line_errors(tmp_path):
    with pytest.raises(BadInput, match="valid modes are fix, dry-run, check"):
        normonnx.fix(tmp_path / "m.onnx", mode="repair")
    with pytest.raises(BadInput, match="skip_missing does not apply"):
        normonnx.benchmark(NormSpec.make("ln"), run=RunOptions("cpu", skip_missing=True))
    with pytest.raises(BadInput, match="unknown input suite"):
        validate(NormSpec.make("ln"), check=CheckOptions("offsets"))
