"""normonnx's version: one place, read by the package, by export's tool_versions and by pyproject."""
__version__ = "0.3.0"
