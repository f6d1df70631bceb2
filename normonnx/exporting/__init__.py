"""The export floor: PyTorch reference modules to ONNX. The variants (the ways a norm is written as
ONNX: native op or decomposed forms), the exporters (dynamo, TorchScript), export itself with its
mismatch check, the export cache and the translations between torch and ONNX names. The reference
modules live in `normonnx.models` (the checkout's models/ folder) on this floor too. Named
`exporting` so that `normonnx.export` stays the function users call. Imports: core and graph."""
