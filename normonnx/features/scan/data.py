"""The inputs `scan --activations` runs the model on: a user's --data .npz (checked against the graph's inputs and
the limits before anything is decompressed) or seeded inputs, token ids drawn within the embedding's rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ...core.errors import BadInput
from ...graph.graph import Graph

MAX_SAMPLES = 1024  # --data samples (--max-samples raises it): each is one model run
MAX_DATA_BYTES = 1 << 30  # --data arrays, decompressed (--max-data-bytes raises it)


def _graph_inputs(model: onnx.ModelProto) -> list:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def vocab_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs used as Gather indices into a constant table (token ids): name -> rows of the table."""
    g = Graph(model.graph)
    out: dict[str, int] = {}
    names = {i.name for i in _graph_inputs(model)}

    def source(v: str) -> str:  # through the reshapes exporters put between ids and the lookup
        for _ in range(8):
            _, n = g.node(v)
            if n is None or n.op_type not in ("Reshape", "Flatten", "Unsqueeze", "Squeeze", "Cast", "Identity"):
                return v
            v = n.input[0]
        return v

    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and source(n.input[1]) in names:
            table = g.shapes.get(g.origin(n.input[0]))
            if table and isinstance(table[0], int):
                name = source(n.input[1])
                out[name] = min(out.get(name, table[0]), table[0])
    return out


def _npz_sizes(p: Path) -> dict[str, tuple[tuple[int, ...], int]]:
    """Each array's (shape, bytes) from the .npz's headers, before anything is decompressed."""
    import zipfile

    out = {}
    with zipfile.ZipFile(p) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as f:
                major, _ = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            out[info.filename[:-4]] = (tuple(shape), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return out


def load_data(path: str | Path, model: onnx.ModelProto, *, max_samples: int = MAX_SAMPLES,
              max_bytes: int = MAX_DATA_BYTES) -> tuple[list[dict[str, np.ndarray]], dict]:
    """--data FILE.npz: one array per graph input, named as the input; an extra leading axis holds
    several samples. BadInput naming the input and what it expected otherwise; the file must be a
    regular file, and its sample count and decompressed size within the limits (checked from the
    arrays' headers, before any is read)."""
    from ...core.safeio import check_regular_file

    p = Path(path)
    check_regular_file(p, "--data")
    try:
        sizes = _npz_sizes(p)
    except Exception as e:
        raise BadInput(f"--data {p}: not a readable .npz file ({type(e).__name__}); save one with "
                       "numpy.savez(path, input_name=array, ...)") from None
    total = sum(b for _, b in sizes.values())
    if total > max_bytes:
        raise BadInput(f"--data {p}: its arrays hold {total / 2**20:.0f} MiB decompressed, over the limit of "
                       f"{max_bytes / 2**20:.0f} MiB; raise it with --max-data-bytes")
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in _graph_inputs(model)}
    n = max((shape[0] for k, (shape, _) in sizes.items() if len(shape) == ranks.get(k, -2) + 1), default=1)
    if n > max_samples:
        raise BadInput(f"--data {p}: {n} samples, over the limit of {max_samples} (each is one model run); raise it "
                       "with --max-samples or pass fewer")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise BadInput(f"--data {p}: not a readable .npz file ({type(e).__name__}); save one with "
                       "numpy.savez(path, input_name=array, ...)") from None
    inputs = _graph_inputs(model)
    want = {i.name: i for i in inputs}
    extra = sorted(set(arrays) - set(want))
    if extra:
        raise BadInput(f"--data {p}: no graph input named {extra[0]!r}; the model's inputs are {', '.join(want)}")
    missing = [n for n in want if n not in arrays]
    if missing:
        raise BadInput(f"--data {p}: no array for graph input {missing[0]!r} (give one per input: {', '.join(want)})")
    counts = set()
    for name, vi in want.items():
        arrays[name], count = _fit_input(p, name, arrays[name], vi)
        counts.add(count)
    if len(counts) != 1:
        raise BadInput(f"--data {p}: every array needs the same sample layout (all with, or all without, a "
                       "leading sample axis of one length)")
    n = counts.pop()
    samples = [{k: v for k, v in arrays.items()}] if n == 0 else [{k: v[s] for k, v in arrays.items()}
                                                                  for s in range(n)]
    return samples, {k: list(v.shape) for k, v in samples[0].items()}


def _fit_input(p: Path, name: str, a: np.ndarray, vi) -> tuple[np.ndarray, int]:
    """One --data array against its graph input: rank (with or without a leading sample axis), fixed dims and
    dtype kind; the array in the input's dtype and its sample count (0: no sample axis)."""
    tt = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    np_dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    if a.ndim not in (len(dims), len(dims) + 1):
        raise BadInput(f"--data {p}: {name} has rank {a.ndim}; the input takes rank {len(dims)} (or "
                       f"{len(dims) + 1} with a leading sample axis)")
    count = a.shape[0] if a.ndim == len(dims) + 1 else 0
    shape = a.shape[1:] if a.ndim == len(dims) + 1 else a.shape
    for i, (d, got) in enumerate(zip(dims, shape, strict=True)):
        if d is not None and d != got:
            raise BadInput(f"--data {p}: {name} dim {i} is {got}; the model's input has {d} there")
    if np.dtype(a.dtype).kind != np.dtype(np_dt).kind:
        raise BadInput(f"--data {p}: {name} is {a.dtype}; the input takes {np.dtype(np_dt)}")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: judged as "no finite"
        return a.astype(np_dt), count


def seeded_samples(model: onnx.ModelProto, input_shapes: dict | None, seed: int = 0) -> list[dict]:
    """One sample of seeded inputs (inputs.seeded_feeds), token ids drawn in the vocabulary range."""
    from ...engine.inputs import seeded_feeds

    feeds = seeded_feeds(model, input_shapes, seed)
    rng = np.random.default_rng(seed + 1)
    for name, vocab in vocab_sizes(model).items():
        if name in feeds and np.issubdtype(feeds[name].dtype, np.integer):
            feeds[name] = rng.integers(0, vocab, feeds[name].shape).astype(feeds[name].dtype)
    return [feeds]
