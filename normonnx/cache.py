"""Content-addressed export cache: a second sweep does no exporting at all.

The key hashes everything that determines the bytes: spec, variant, opset, exporter, dynamic, and
the torch/onnx/onnxscript/normonnx versions. Failed exports (an opset mismatch, an exporter crash)
are cached too, as their error, so a warm run does not retry them. Writes are atomic.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import BadInput, ExportMismatch
from .export import export_report, tool_versions
from .spec import NormSpec


def default_cache_dir() -> Path:
    env = os.environ.get("NORMONNX_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "normonnx"


class ExportCache:
    """export(...) -> Path, served from `root` when the same request was exported before."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"cannot use cache folder {self.root}: {e.strerror}; set --cache-dir or NORMONNX_CACHE") from None
        self.hits = 0
        self.misses = 0
        self._versions = tool_versions()

    def key(self, spec: NormSpec, variant: str, opset: int, exporter: str, dynamic: bool, allow_mismatch: bool) -> str:
        doc = {"spec": spec.to_dict(), "variant": variant, "opset": opset, "exporter": exporter, "dynamic": dynamic,
               "allow_mismatch": allow_mismatch, "versions": self._versions}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def export(self, spec: NormSpec, variant: str, opset: int, exporter: str, dynamic: bool = False,
               output: str | Path | None = None, allow_mismatch: bool = False) -> Path:
        k = self.key(spec, variant, opset, exporter, dynamic, allow_mismatch)
        folder = self.root / k[:2]
        model, failure = folder / f"{k}.onnx", folder / f"{k}.error.json"
        if failure.is_file():
            self.hits += 1
            raise ExportMismatch(json.loads(failure.read_text())["error"])
        if not model.is_file():
            self.misses += 1
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
                try:
                    export_report(spec, variant, opset, exporter, dynamic, Path(tmp) / "m.onnx", allow_mismatch)
                except ExportMismatch as e:
                    _atomic_write(failure, json.dumps({"error": str(e)}).encode())
                    raise
                os.replace(Path(tmp) / "m.onnx", model)
        else:
            self.hits += 1
        if output is None:
            return model
        shutil.copyfile(model, output)
        return Path(output)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
