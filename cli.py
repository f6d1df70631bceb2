"""normonnx's command line, runnable from a checkout: `python cli.py sweep ...` is `normonnx sweep ...`.

The commands live in normonnx/presentation/cli.py (installed as `normonnx.presentation.cli`, the `normonnx`
script's entry point) so that the wheel needs no build hook and no top-level module besides `normonnx`."""
from normonnx.presentation.cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
