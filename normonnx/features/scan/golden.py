"""Golden outputs: `scan --activations --save-outputs` stores each judged layer's captured inputs and the model's
outputs (ONNX's test-data layout, or one .npz), and `--load-outputs` replays them on runtimes without the model's
inputs: each stored layer cut out of the model as it is now, judged against the oracle and the stored outputs."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from ...core.errors import BadInput, first_line
from ...engine.probe import find_layers
from ...graph.cutout import Cutter
from ...graph.graph import load_model
from .checks import ActivationResult, LayerCheck
from .replay import replay

GOLDEN_META = "normonnx-golden.json"  # in a --save-outputs folder: which layer each test-data folder holds


class Golden:
    """--save-outputs: each judged layer's inputs (as the oracle takes them) and the model's outputs. A path ending
    in .npz: one compressed file. Any other path: a new folder in ONNX's own test-data layout, one folder per layer
    (`layerK/test_data_set_S/input_0.pb`, `output_0.pb`: TensorProtos onnx.load_tensor reads), with the cut-out
    layer as `model.onnx` where it takes exactly the stored tensors, so ONNX Runtime's onnx_test_runner runs it."""

    def __init__(self, path: str | Path):
        from ...core.safeio import check_output_folder, check_output_path

        self.path = Path(path)
        self.folder = self.path.suffix != ".npz"
        if self.folder:
            check_output_folder(self.path, "--save-outputs", "or a path ending in .npz for one file")
        else:
            check_output_path(self.path, "golden outputs")
        self.arrays: dict[str, np.ndarray] = {}
        self.models: dict[int, bytes] = {}
        self.layers: list[dict] = []

    def add(self, lc: LayerCheck, xs: list[np.ndarray], ys: list[np.ndarray], layer_path: Path | None = None) -> None:
        self.layers.append({"index": lc.index, "layer": lc.norm.nodes[0], "output": lc.norm.output, "samples": len(xs)})
        for s, (x, y) in enumerate(zip(xs, ys, strict=True)):
            self.arrays[f"x_{lc.index}_{s}"], self.arrays[f"y_{lc.index}_{s}"] = np.asarray(x), np.asarray(y)
        if self.folder and layer_path is not None and xs and _takes(layer_path, xs[0], ys[0]):
            self.models[lc.index] = layer_path.read_bytes()

    def write(self) -> None:
        import io
        import json

        from ...core.safeio import atomic_write

        if self.folder:
            return self._write_folder()
        meta = np.frombuffer(json.dumps({"normonnx_golden": 1, "layers": self.layers}).encode(), np.uint8)
        buf = io.BytesIO()
        # numpy's stub types **kwds as if a key could be its allow_pickle flag
        np.savez_compressed(buf, __meta__=meta, **self.arrays)  # type: ignore[arg-type]
        atomic_write(self.path, buf.getvalue())

    def _write_folder(self) -> None:
        """Staged beside the folder, then renamed into place: a reader never sees half of it."""
        import json
        import os
        import tempfile

        from onnx import numpy_helper

        from ...core.safeio import check_output_folder, umask

        stage = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}."))
        try:
            for layer in self.layers:
                k = layer["index"]
                layer["dir"] = f"layer{k}"
                if k in self.models:
                    (stage / layer["dir"]).mkdir()
                    (stage / layer["dir"] / "model.onnx").write_bytes(self.models[k])
                for s in range(layer["samples"]):
                    d = stage / layer["dir"] / f"test_data_set_{s}"
                    d.mkdir(parents=True)
                    for what, key in (("input", "x"), ("output", "y")):
                        t = numpy_helper.from_array(self.arrays[f"{key}_{k}_{s}"], f"{what}_0")
                        (d / f"{what}_0.pb").write_bytes(t.SerializeToString())
            (stage / GOLDEN_META).write_text(json.dumps({"normonnx_golden": 2, "layers": self.layers}, indent=1))
            os.chmod(stage, 0o777 & ~umask())  # mkdtemp makes 0700: the folder gets what mkdir would give it
            check_output_folder(self.path, "--save-outputs", "or a path ending in .npz for one file")
            os.rename(stage, self.path)
        except BaseException:
            import shutil

            shutil.rmtree(stage, ignore_errors=True)
            raise


def _takes(layer_path: Path, x: np.ndarray, y: np.ndarray) -> bool:
    """Whether the cut-out layer takes exactly the stored input and gives the stored output (one input, one output,
    their dtypes and ranks): not a norm judged after a permutation, or with extra inputs."""
    m = onnx.load(str(layer_path), load_external_data=False)
    ins = [i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    if len(ins) != 1 or len(m.graph.output) != 1:
        return False
    return all(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type) == a.dtype and
               len(v.type.tensor_type.shape.dim) == a.ndim for v, a in ((ins[0], x), (m.graph.output[0], y)))


def load_golden(path: str | Path) -> dict[str, tuple[list, list]]:
    """layer name -> (stored inputs, stored outputs) of what --save-outputs wrote (a .npz file or a test-data
    folder); BadInput saying what is wrong."""
    import json
    import zipfile

    from ...core.safeio import check_regular_file

    p = Path(path)
    if p.is_dir():
        return _load_golden_folder(p)
    check_regular_file(p, "--load-outputs")
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            out = {}
            for layer in meta["layers"]:
                k, n = layer["index"], layer["samples"]
                out[layer["layer"]] = ([z[f"x_{k}_{s}"] for s in range(n)], [z[f"y_{k}_{s}"] for s in range(n)])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise BadInput(f"--load-outputs {p} is not a file `scan --activations --save-outputs` wrote "
                       f"({type(e).__name__}: {first_line(e, 120)})") from None
    return out


def _tensors(sets: list[Path], what: str) -> list[np.ndarray]:
    """Each test-data folder's `what`_0.pb (input or output) as an array."""
    from onnx import numpy_helper

    return [numpy_helper.to_array(onnx.load_tensor(str(s / f"{what}_0.pb"))) for s in sets]


def _load_golden_folder(p: Path) -> dict[str, tuple[list, list]]:
    import json

    from google.protobuf.message import DecodeError

    from ...core.safeio import check_regular_file

    out = {}
    try:
        check_regular_file(p / GOLDEN_META, "--load-outputs")
        meta = json.loads((p / GOLDEN_META).read_text())
        for layer in meta["layers"]:
            d = p / Path(layer["dir"]).name  # a name inside the folder, never a path out of it
            sets = [d / f"test_data_set_{s}" for s in range(int(layer["samples"]))]
            for s in sets:
                for f in ("input_0.pb", "output_0.pb"):
                    check_regular_file(s / f, "--load-outputs")
            out[layer["layer"]] = (_tensors(sets, "input"), _tensors(sets, "output"))
    except BadInput as e:
        raise BadInput(f"--load-outputs {p} is not a folder `scan --activations --save-outputs` wrote ({e})") from None
    except (OSError, ValueError, KeyError, TypeError, DecodeError) as e:  # JSONDecodeError is a ValueError
        raise BadInput(f"--load-outputs {p} is not a folder `scan --activations --save-outputs` wrote "
                       f"({type(e).__name__}: {first_line(e, 120)})") from None
    return out


def check_golden(path: str | Path, golden: str | Path, runtimes: list[str] | None = None,
                 input_shapes: dict | None = None, progress=None) -> ActivationResult:
    """--load-outputs: each stored layer of the model at `path`, cut out and run on each runtime (default:
    ORT CPU) on the stored inputs, judged against the oracle of those inputs, with its distance from the
    stored outputs. A stored layer the model no longer has, or a layer with nothing stored, is said so."""
    from ...engine.runtimes import require
    from ...graph.shapes import fix_input_shapes, infer_shapes

    stored = load_golden(golden)
    names = list(dict.fromkeys(runtimes or ["cpu"]))
    for n in names:
        if require(n).kind != "onnx":
            raise BadInput(f"--runtimes {n}: stored outputs are judged on ONNX runtimes")
    p = Path(path)
    model = load_model(p, load_external_data=False)
    if input_shapes:
        fix_input_shapes(model, input_shapes)
    analysed = infer_shapes(model)
    norms, _ = find_layers(analysed, p.parent)
    layers = [LayerCheck(i, f, replayed_only=True) for i, f in enumerate(norms)]
    result = ActivationResult(str(p), 0, f"--load-outputs {golden}", {}, layers)
    missing = sorted(set(stored) - {f.nodes[0] for f in norms})
    if missing:
        result.notes.append(f"stored layers this model does not have: {', '.join(missing[:5])}")
    extractor = Cutter(analysed, p.parent)
    with tempfile.TemporaryDirectory(prefix="normonnx-golden-") as tmp:
        for lc in layers:
            if lc.norm.nodes[0] not in stored:
                lc.why = "nothing stored for this layer"
                continue
            xs, ys = stored[lc.norm.nodes[0]]
            result.samples = max(result.samples, len(xs))
            if progress:
                progress(lc.index, len(layers), lc.norm)
            try:
                path_l = extractor.extract(lc.norm, Path(tmp) / f"layer{lc.index}.onnx")
            except BadInput as e:
                lc.why = str(e)
                continue
            for rt in names:
                lc.on[rt] = replay(path_l, lc, xs, rt, stored=ys)
    result.provider = ",".join(names)
    return result
