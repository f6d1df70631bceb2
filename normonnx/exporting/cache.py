"""Content-addressed export cache: a second sweep does no exporting at all.

The key hashes everything that determines the bytes: spec, variant, opset, exporter, dynamic, the
torch/onnx/onnxscript/normonnx versions, and a hash of normonnx's own source (its reference modules,
variants and exporter translations: an edited module is exported afresh). Failed exports (an opset mismatch, an exporter crash)
are cached too, as their error, so a warm run does not retry them. Writes are atomic.

What the cache returns is checked, never trusted: each model has its SHA-256 beside it, and its
normonnx metadata must name the requested spec, variant, exporter and opset. A mismatch (a file
replaced or corrupted in the cache) is a miss and a warning, never a result for another model.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

from ..core.errors import BadInput, ExportMismatch
from ..core.safeio import atomic_write
from ..core.spec import NormSpec
from .export import export_result, source_digest, tool_versions


class CacheWarning(UserWarning):
    """A cache entry was not what its key promises; it was exported again."""


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
        hint = "set --cache-dir or NORMONNX_CACHE to a writable folder, or pass --no-cache"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass  # a folder we cannot write in fails here, before any case runs
        except OSError as e:
            raise BadInput(f"cannot use cache folder {self.root}: {e.strerror or e}; {hint}") from None
        self.hits = 0
        self.misses = 0
        self.rejected = 0
        self._versions = tool_versions()
        self._source = source_digest()

    def key(self, spec: NormSpec, variant: str, opset: int, exporter: str, dynamic: bool, allow_mismatch: bool) -> str:
        doc = {"spec": spec.to_dict(), "variant": variant, "opset": opset, "exporter": exporter, "dynamic": dynamic,
               "allow_mismatch": allow_mismatch, "versions": self._versions, "source": self._source}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def export(self, spec: NormSpec, variant: str, opset: int, exporter: str, dynamic: bool = False,
               output: str | Path | None = None, allow_mismatch: bool = False) -> Path:
        k = self.key(spec, variant, opset, exporter, dynamic, allow_mismatch)
        folder = self.root / k[:2]
        model, digest, failure = folder / f"{k}.onnx", folder / f"{k}.sha256", folder / f"{k}.error.json"
        cached_error = _read_error(failure)
        if cached_error is not None:
            self.hits += 1
            raise ExportMismatch(cached_error)
        why = _entry_problem(model, digest, spec, variant, opset, exporter) if model.is_file() else "absent"
        if why is None:
            self.hits += 1
        else:
            if why != "absent":
                self.rejected += 1
                warnings.warn(f"export cache entry {model} {why}: exported again", CacheWarning, stacklevel=2)
            self.misses += 1
            folder.mkdir(parents=True, exist_ok=True)
            for p in (model, digest, failure):  # a link or a pipe planted in the cache goes; a file is replaced
                if p.is_symlink() or (p.exists() and not p.is_file()):
                    p.unlink()
            with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
                try:
                    export_result(spec, variant, opset, exporter, dynamic, Path(tmp) / "m.onnx", allow_mismatch)
                except ExportMismatch as e:
                    atomic_write(failure, json.dumps({"error": str(e)}).encode())
                    raise
                data = (Path(tmp) / "m.onnx").read_bytes()
                atomic_write(digest, hashlib.sha256(data).hexdigest().encode())
                os.replace(Path(tmp) / "m.onnx", model)
        if output is None:
            return model
        atomic_write(Path(output), model.read_bytes(), "model")
        return Path(output)


def _read_error(path: Path) -> str | None:
    if not path.is_file() or path.is_symlink():
        return None
    try:
        err = json.loads(path.read_text(encoding="utf-8"))["error"]
        return err if isinstance(err, str) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: a miss, exported again


def _entry_problem(model: Path, digest: Path, spec: NormSpec, variant: str, opset: int, exporter: str) -> str | None:
    """Why a cached model cannot be served for this request, or None."""
    import onnx

    from ..graph.graph import metadata

    # a cache entry is never read through a link, nor from a pipe (it would block forever)
    if any(p.is_symlink() or not p.is_file() for p in (model, digest)):
        return "is not a regular file, or its checksum is not"
    try:
        data = model.read_bytes()
        want = digest.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "has no readable checksum"
    if hashlib.sha256(data).hexdigest() != want:
        return "does not match its checksum"
    try:
        meta = metadata(onnx.load_from_string(data))
    except Exception:
        return "is not a readable ONNX model"
    expected = {"spec": spec.to_json(), "variant": variant, "exporter": exporter, "opset_requested": str(opset)}
    wrong = [k for k, v in expected.items() if meta.get(k) != v]
    return f"holds another model (its metadata differs in {', '.join(wrong)})" if wrong else None
