"""OpenVINO beside ONNX Runtime CPU: benchmarks/runtime_findings.py for the runtimes cpu, openvino (f32 pinned) and
openvino-default (this machine's default precision), kept under its old name. Writes
benchmarks/results/findings-{cpu,openvino,openvino-default}.md and their lines in findings.md.

    python benchmarks/openvino_findings.py [--out FOLDER] [--no-run]     # needs: pip install "normonnx[openvino]"

The sweep is resumable (FOLDER, default openvino-sweep/); each table names the CPU flags that decide OpenVINO's
default precision.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime_findings import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--runtimes", "cpu,openvino,openvino-default", "--out", "openvino-sweep", *sys.argv[1:]]))
