"""The model run that hands back every norm's input and output (`scan --activations`): one ORT session of the
whole model with those values added as graph outputs, and the runs that fetch them.

The session is built on a thread of its own as soon as the candidates are known (`Capture.start`, find_layers'
`confirming`), while the probe measures them: ORT releases the GIL while it reads the weights and optimizes the
graph, and the probe runs one-thread sessions of small cut-outs, so on two cores the two overlap instead of
adding up. Only one whole-model session is ever held: one built on other names is dropped before the next.
"""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx

from ...core.errors import BadInput, first_line
from ...core.tables import DTYPES, PROVIDERS, dtype_of_onnx
from ...graph.graph import Graph, check_external_data, load_model, over_proto_limit
from ...graph.patterns import FoundNorm

SAMPLES_PER_RUN = 64  # samples stacked into one ORT run where the model's batch dim allows


def quantized_ends(view, f: FoundNorm) -> tuple[str, float | None]:
    """(the value a layer computes from, its output's int8 step) for a layer that runs between Q/DQ pairs: a Q/DQ
    pair on its input is taken as the model takes it (the layer sees the dequantized values, and so does the
    oracle); the step is the largest scale of the last pair in its region (None: no pair inside)."""
    from ...graph.irview import is_op, is_qdq_pair

    names = set(f.nodes)
    pairs = [n for n in view.nodes if view.name(n) in names and is_qdq_pair(n)]
    if not pairs:
        return f.input, None
    x, source = view.value(f.input), f.input
    first = [u.node for u in x.uses()] if x is not None else []
    if len(first) == 1 and is_qdq_pair(first[0]) and view.name(first[0]) in names:
        dq = first[0].outputs[0].uses()[0].node
        if is_op(dq, "DequantizeLinear"):
            source = dq.outputs[0].name
    scale = view.const(pairs[-1].inputs[1])
    return source, float(np.max(np.abs(scale))) if scale is not None and np.size(scale) else None


def captured_names(view, norms: list[FoundNorm]) -> dict[str, int]:
    """{value: ONNX element type} of what a run must hand back for each main-graph norm: the value it computes
    from, the extra inputs it adds (Skip*), its output. An output shape inference left untyped (e.g. after
    GroupNormalization-21) takes its input's type: norms keep the dtype."""
    def elem(name: str, fallback: str) -> int:
        for n in (name, fallback):
            v = view.value(n)
            if v is not None and v.dtype is not None:
                return int(v.dtype)
        return onnx.TensorProto.FLOAT

    out: dict[str, int] = {}
    for f in norms:
        if f.scope:
            continue
        for n in (quantized_ends(view, f)[0], *f.extra_inputs, f.output):
            out.setdefault(n, elem(n, f.input))
    return out


def open_capture(p: Path, names: dict[str, int], work: Path):
    """(ORT session of the model at `p` with `names` as extra graph outputs, its provider's name). The weights
    stay in their files: ORT reads them from the model's folder (never re-saved, never held here), each entry
    checked first. The model runs where it would be deployed: ORT CUDA when this onnxruntime has it, else CPU."""
    import onnxruntime as ort

    from ...engine.runtimes import get_runtime, ort_session

    full = load_model(p, load_external_data=False)
    check_external_data(full, p.parent)
    outputs = {o.name for o in full.graph.output}
    full.graph.output.extend(onnx.helper.make_tensor_value_info(n, t, None) for n, t in names.items()
                             if n not in outputs)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    provider = "cuda" if get_runtime("cuda").unavailable() is None else "cpu"
    capture = None if over_proto_limit(full) else full.SerializeToString()
    if capture is not None:  # from bytes: ORT finds the external data in the model's own folder
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(p.parent.resolve()))
    else:  # a graph near protobuf's 2 GB of inline tensors: saved once, its tensors external
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in full.graph.initializer):
            raise BadInput(f"{p}: its inline tensors and the norms' values as outputs pass protobuf's 2 GB "
                           "limit: store all its weights as external data first")
        capture = str(work / "capture.onnx")
        onnx.save(full, capture, save_as_external_data=True, location="capture.data")
    try:
        return ort_session(capture, so, provider), PROVIDERS[provider]
    except Exception as e:
        raise BadInput(f"ORT cannot load {p} with its norms' values as outputs: {first_line(e, 200)}") \
            from None


class Capture:
    """The capture session of the model at `path`, started early on a thread (`start`, given as find_layers'
    `confirming`) and taken when the layers to capture are known (`session`). A context manager: leaving it
    waits for the thread and removes its work folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.names: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._result: object = None
        self._tmp = tempfile.TemporaryDirectory(prefix="normonnx-capture-")

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, view, norms: list[FoundNorm]) -> None:
        """Begin building the session for `norms` (candidates: a superset of the layers the probe keeps)."""
        if self._thread is not None:
            return
        self.names = captured_names(view, norms)
        self._thread = threading.Thread(target=self._build, name="normonnx-capture", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        try:
            self._result = open_capture(self.path, self.names, Path(self._tmp.name))
        except BaseException as e:  # raised where the session is taken, in the caller's thread
            self._result = e

    def session(self, wanted: dict[str, int]):
        """(session, provider) with every value of `wanted` as an output: the early one where it has them all,
        else one built now (the early one dropped first, so the weights are never held twice)."""
        try:
            early = self._take()
        except BadInput:  # a candidate the probe then left out may be what ORT refused: the layers' own names
            if set(wanted) >= set(self.names):
                raise
            early = None
        if early is not None and set(wanted) <= set(self.names):
            return early
        early = None
        return open_capture(self.path, wanted, Path(self._tmp.name))

    def _take(self):
        if self._thread is None:
            return None
        self._thread.join()
        got, self._result = self._result, None
        if isinstance(got, BaseException):
            raise got
        return got

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        self._result = None
        self._tmp.cleanup()

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fetch(sess, names: list[str], samples: list[dict], result, what: str) -> dict[str, list[np.ndarray]]:
    """Every sample's values of `names`. Samples are stacked along the batch dim, SAMPLES_PER_RUN to a run,
    when every graph input's first dim is symbolic and a first single-sample run shows each captured value
    leading with that dim (k samples give k times its rows, the other dims alike); else one run a sample."""
    def run(feeds):
        try:
            vals = sess.run(names, feeds)
        except Exception as e:
            raise BadInput(f"ORT cannot run {what}: {first_line(e, 200)}") from None
        result.runs += 1
        result.captured_bytes += sum(int(np.asarray(v).nbytes) for v in vals)
        return [np.asarray(v) for v in vals]

    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    first = run(samples[0])
    for n, v in zip(names, first, strict=True):
        got[n].append(v)
    rest = samples[1:]
    symbolic = all(not (i.shape and isinstance(i.shape[0], int)) for i in sess.get_inputs())
    leads = [np.shape(v)[0] if np.ndim(v) else 0 for v in first]  # 0: no leading dim to stack along
    same = all(all(np.shape(s[k]) == np.shape(samples[0][k]) for k in s) for s in rest)
    if not (rest and symbolic and same and all(leads) and all(np.ndim(v) for v in samples[0].values())):
        for feeds in rest:
            for n, v in zip(names, run(feeds), strict=True):
                got[n].append(v)
        return got
    for at in range(0, len(rest), SAMPLES_PER_RUN):
        chunk = rest[at:at + SAMPLES_PER_RUN]
        feeds = {k: np.concatenate([s[k] for s in chunk]) for k in chunk[0]}
        vals = run(feeds)
        ok = all(np.shape(v)[0] == len(chunk) * lead and np.shape(v)[1:] == np.shape(f)[1:]
                 for v, lead, f in zip(vals, leads, first, strict=True))
        if not ok:  # a value that does not lead with the batch: sample by sample
            for feeds1 in chunk:
                for n, v in zip(names, run(feeds1), strict=True):
                    got[n].append(v)
            continue
        for n, v, lead in zip(names, vals, leads, strict=True):
            got[n].extend(v[j * lead:(j + 1) * lead] for j in range(len(chunk)))
    return got


def nbytes(g: Graph, name: str) -> int:
    """A captured tensor's size from the inferred shape (symbolic dims count 1: a lower bound)."""
    dims = g.shapes.get(name) or []
    dt = dtype_of_onnx(g.types.get(name))
    size = int(np.prod([d if isinstance(d, int) else 1 for d in dims])) if dims else 1
    return size * (DTYPES[dt].itemsize if dt in DTYPES else 4)


def batches(todo: list, size, limit: int) -> list[list]:
    """Layers grouped so that one model run fetches at most `limit` bytes of captured tensors."""
    out: list[list] = []
    cur: list = []
    used = 0
    for lc in todo:
        need = sum(size(n) for n in (lc.source, *lc.norm.extra_inputs, lc.norm.output))
        if cur and used + need > limit:
            out.append(cur)
            cur, used = [], 0
        cur.append(lc)
        used += need
    return out + ([cur] if cur else [])
