"""The fix floor: `normonnx fix` (`normonnx.fix()`). fixer plans each failing layer's new form, applies it
with onnx_ir and writes the model; proof validates every layer and candidate form against the layer's own
norm, compares the whole models and times them. It stands on the features floor: the written model is
judged by `scan --validate` itself. Imports: every floor below but presentation.

`from normonnx.repair.fixer import fix, FixOptions, ProofOptions` is the public way in, as before the floors."""
from .fixer import FixOptions, FixReport, FixResult, LayerFix, ProofOptions, fix, plan_layers

__all__ = ["fix", "FixOptions", "ProofOptions", "FixResult", "FixReport", "LayerFix", "plan_layers"]
