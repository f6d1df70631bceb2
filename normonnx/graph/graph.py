"""ONNX models as normonnx reads them: loading with one-line errors, the one external-data check,
per-node and per-tensor validity checks, a producer/consumer index, and facts (opset, op histogram,
normonnx metadata).

Every file a user gives is hostile until checked: nothing here raises anything but BadInput on a
malformed model, and no byte outside the model's folder is ever read.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..core.errors import BadInput, first_line
from ..core.safeio import check_regular_file
from ..core.tables import dtype_of_onnx

META_PREFIX = "normonnx."
DEFAULT_DOMAINS = ("", "ai.onnx")
MS = "com.microsoft"
PASS_THROUGH = ("Cast", "Identity")
MAX_LOCATION = 1024  # longer than any real path; a 100 kB name is an attack, not a file


# -- loading -------------------------------------------------------------------------------------
MAP_INLINE_ABOVE = 16 << 20  # a model file larger than this has its inline weights read in place (map_inline)
MAP_MIN_TENSOR = 1024  # inline tensors of at least this many bytes are referenced where they lie


def load_model(path: str | Path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file or raise BadInput with a one-line reason. External data is checked always
    (location, offset, length against the file and the tensor's dims) and read only if asked. A file over
    MAP_INLINE_ABOVE bytes is read with map_inline: its inline weights stay in the file, referenced in place."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise BadInput(f"no such model file: {p}")
    check_regular_file(p, "model file")
    try:
        model = map_inline(p) if p.stat().st_size > MAP_INLINE_ABOVE else None
    except Exception:  # not the wire format map_inline reads (protobuf's DecodeError too): onnx's parser says why
        model = None
    try:
        model = model if model is not None else onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise BadInput(f"{p} is not a readable ONNX model ({type(e).__name__}): give a .onnx file") from None
    if not model.graph.node and not model.graph.output:
        raise BadInput(f"{p} holds no ONNX graph: give a .onnx file written by an exporter")
    check_functions(model)
    # locations are checked always; files, offsets and lengths when the data is read (a scan reads
    # only the tensors of the layers it validates, so a missing unrelated weight file is no error)
    entries = check_external_data(model, p.parent, files=load_external_data)
    if load_external_data:
        read_external_data(entries)
    return model


def ort_source(path: str | Path) -> tuple[bytes | str, str | None]:
    """What to give ONNX Runtime for the whole model at `path`: the path itself, or, for a file load_model maps
    (inline weights, over MAP_INLINE_ABOVE bytes), the mapped model's bytes and the folder ORT must read its
    weights from (session config session.model_external_initializers_file_folder_path). ORT then reads the
    weights where they lie in the file instead of parsing a copy of them with the graph."""
    p = Path(path)
    if p.stat().st_size <= MAP_INLINE_ABOVE:
        return str(p), None
    try:
        return map_inline(p).SerializeToString(), str(p.parent.resolve())
    except Exception:
        return str(p), None  # not what map_inline reads: ORT's own parser says what is wrong


def map_inline(path: Path) -> onnx.ModelProto:
    """The model with every inline initializer of MAP_MIN_TENSOR bytes or more of the main graph turned into a
    reference to its own bytes in the .onnx file (data location EXTERNAL, location: the file itself, offset,
    length), read from a memory map of the file by its protobuf wire format: protobuf never holds the weights,
    and every reader of external data -- normonnx's checked reads, ORT's memory-mapped ones, fix's streamed copy
    -- reads them in place. Only the graph's structure is copied. ValueError when the bytes are not the wire
    format of a ModelProto (the caller lets onnx's parser say what is wrong)."""
    import mmap

    with open(path, "rb") as f:
        if not os.fstat(f.fileno()).st_size:
            raise ValueError("empty file")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    why = None
    try:
        buf = memoryview(mm)
        out = bytearray()
        for field, wt, start, body, end in _fields(buf, 0, len(buf)):
            if field == 7 and wt == 2:  # ModelProto.graph
                out += _tag(7, 2) + _length_delimited(_mapped_graph(buf, body, end, path.name))
            else:
                out += buf[start:end]
    except (ValueError, IndexError) as e:  # a field past the end: not (all of) a ModelProto
        why = str(e)  # the traceback's frames hold views into the map: gone when this block ends
    del buf
    mm.close()
    if why is not None:
        raise ValueError(why)
    return onnx.ModelProto.FromString(bytes(out))


def _mapped_graph(buf, pos: int, end: int, location: str) -> bytes:
    out = bytearray()
    for field, wt, start, body, stop in _fields(buf, pos, end):
        if field == 5 and wt == 2:  # GraphProto.initializer
            out += _tag(5, 2) + _length_delimited(_mapped_tensor(buf, start, body, stop, location))
        else:
            out += buf[start:stop]
    return bytes(out)


def _mapped_tensor(buf, start: int, body: int, end: int, location: str) -> bytes:
    """One TensorProto, its raw_data (field 9) replaced by a reference to where it lies in the file."""
    fields = list(_fields(buf, body, end))
    raw = next(((b, e) for f, wt, s, b, e in fields if f == 9 and wt == 2), None)
    # data_location (field 14) already EXTERNAL: leave it as it is (DEFAULT, written out explicitly, is replaced)
    external = any(f == 14 and wt == 0 and _varint(buf, b)[0] == onnx.TensorProto.EXTERNAL for f, wt, s, b, e in fields)
    if raw is None or external:
        return bytes(buf[body:end])
    data, n = raw[0], raw[1] - raw[0]  # where the payload starts in the file, and its length
    if n < MAP_MIN_TENSOR:
        return bytes(buf[body:end])
    out = bytearray()
    for f, _wire, s, _body, e in fields:
        if f not in (9, 14):
            out += buf[s:e]
    for key, value in (("location", location), ("offset", str(data)), ("length", str(n))):
        entry = _tag(1, 2) + _length_delimited(key.encode()) + _tag(2, 2) + _length_delimited(value.encode())
        out += _tag(13, 2) + _length_delimited(entry)
    out += _tag(14, 0) + _enc_varint(onnx.TensorProto.EXTERNAL)
    return bytes(out)


def _fields(buf, pos: int, end: int):
    """(field number, wire type, field start, payload start, field end) of each field in buf[pos:end]."""
    while pos < end:
        start = pos
        tag, pos = _varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        body = pos
        if wt == 0:
            _, pos = _varint(buf, pos)
        elif wt == 1:
            pos += 8
        elif wt == 2:
            n, body = _varint(buf, pos)
            pos = body + n
        elif wt == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wt} at byte {start}")
        if pos > end or field == 0:
            raise ValueError(f"a field runs past its message at byte {start}")
        yield field, wt, start, body, pos


def _varint(buf, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tag(field: int, wt: int) -> bytes:
    return _enc_varint(field << 3 | wt)


def _length_delimited(payload: bytes) -> bytes:
    return _enc_varint(len(payload)) + payload


def check_functions(model: onnx.ModelProto) -> None:
    """BadInput naming the cycle when model-local functions call each other (or themselves): ONNX functions
    cannot recurse -- an inliner never ends, and ONNX Runtime refuses such a model."""
    funcs = {(f.domain, f.name): f for f in model.functions}
    calls = {k: {(n.domain, n.op_type) for n in f.node if (n.domain, n.op_type) in funcs} for k, f in funcs.items()}
    state: dict = {}  # 1: on the current path, 2: done
    for root in calls:
        stack = [(root, iter(sorted(calls[root])))]
        state[root] = state.get(root) or 1
        if state[root] == 2:
            continue
        path = [root]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            if state.get(nxt) == 1:
                cycle = " -> ".join(f"{d}.{n}" for d, n in path[path.index(nxt):] + [nxt])
                raise BadInput(f"the model's local functions call themselves ({cycle}): ONNX functions cannot "
                               "recurse, and ONNX Runtime refuses such a model")
            if state.get(nxt) is None:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(calls[nxt]))))
                path.append(nxt)


def sort_nodes(graph: onnx.GraphProto) -> str | None:
    """Put the graph's nodes in topological order, in place, when they are not (ORT's float16 converter
    with keep_io_types writes the input Casts after the nodes that read them; ORT sorts such a graph and
    runs it, so normonnx does too, on its working copy). Returns a note saying so, or None when the graph
    was in order. A real cycle (or a value two nodes compute) has no order: BadInput naming a node on it.
    Values read from outside (graph inputs, initializers, an outer scope) and "" (ONNX's omitted
    optional value) need no producer."""
    nodes = list(graph.node)
    made: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                if o in made:
                    raise BadInput(f"value {o!r} is computed by two nodes ({node_label(nodes[made[o]])} and "
                                   f"{node_label(n)}): ONNX requires every value name to be assigned once")
                made[o] = i
    needs = [{made[v] for v in _reads(n) if v in made} for n in nodes]  # a node reading itself: a cycle
    if all(all(j < i for j in needs[i]) for i in range(len(nodes))):
        return None
    users: dict[int, list[int]] = {}
    waiting = [len(d) for d in needs]
    for i, d in enumerate(needs):
        for j in d:
            users.setdefault(j, []).append(i)
    import heapq

    ready = [i for i in range(len(nodes)) if not waiting[i]]
    heapq.heapify(ready)
    order = []
    while ready:  # Kahn's algorithm, taking the earliest ready node first: the original order where it holds
        i = heapq.heappop(ready)
        order.append(i)
        for k in users.get(i, []):
            waiting[k] -= 1
            if not waiting[k]:
                heapq.heappush(ready, k)
    if len(order) < len(nodes):
        stuck = next(i for i in range(len(nodes)) if waiting[i])
        raise BadInput(f"the graph has a cycle: {node_label(nodes[stuck])} reads a value computed after it, on a "
                       "loop back to itself (no order can compute it; ONNX requires an acyclic graph)")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return ("the graph's nodes are not in topological order (ONNX Runtime sorts such a graph and runs it): "
            "normonnx sorted its working copy")


def _reads(n: onnx.NodeProto) -> list[str]:
    """The values a node reads: its inputs and the outer values its If/Loop/Scan bodies read."""
    out = [v for v in n.input if v]
    for a in n.attribute:
        for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            inner = {o for m in sg.node for o in m.output} | {t.name for t in sg.initializer} | \
                {i.name for i in sg.input}
            out += [v for m in sg.node for v in m.input if v and v not in inner]
    return out


@dataclass(frozen=True)
class ExternalEntry:
    """One tensor stored outside the .onnx file, checked: read `nbytes` at `offset` of `path`."""

    tensor: onnx.TensorProto
    path: Path
    offset: int
    nbytes: int


def tensor_nbytes(t: onnx.TensorProto) -> int | None:
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:
        return None
    packed: dict[int, int] = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}  # data_type is a plain int
    bits = packed.get(t.data_type)
    n = math.prod(t.dims)
    return (n * bits + 7) // 8 if bits else n * itemsize


def check_external_data(model: onnx.ModelProto, base: Path, only: set[str] | None = None,
                        files: bool = True) -> list[ExternalEntry]:
    """Check every external-data entry (or those of the tensors named in `only`) without reading
    any data: BadInput naming the tensor for a location outside the model's folder (`..`, absolute,
    through a symlink), a symlink loop, a NUL byte or an absurd length in the name, a non-regular
    file, a bad offset or length, or more or fewer bytes than the tensor's dims need. A missing
    file is an error only with `files` (the data is about to be read). Returns the entries."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    root = base.resolve()
    out = []
    for t in _get_all_tensors(model):
        if not uses_external_data(t) or (only is not None and t.name not in only):
            continue
        info = {e.key: e.value for e in t.external_data}
        name = t.name[:80]
        loc = info.get("location", "")
        if not loc:
            raise BadInput(f"tensor {name!r} is stored externally but names no location")
        if "\x00" in loc or len(loc) > MAX_LOCATION:
            raise BadInput(f"tensor {name!r}: external data location {loc[:60]!r}... is not a file name "
                           f"(NUL byte or over {MAX_LOCATION} characters)")
        try:
            target = (root / loc).resolve(strict=False)
        except (RuntimeError, OSError) as e:  # a symlink loop, a component too long
            raise BadInput(f"tensor {name!r}: external data location {loc!r} cannot be resolved "
                           f"({getattr(e, 'strerror', None) or e})") from None
        if Path(loc).is_absolute() or root not in target.parents:
            raise BadInput(f"tensor {name!r}: external data location {loc!r} escapes the model's folder: refused")
        try:
            st = target.stat()
        except OSError as e:
            if not files:
                continue  # missing is checked when (and if) this tensor is read
            raise BadInput(f"tensor {name!r}: external data file {loc!r} is missing or unreadable next to the model "
                           f"({e.strerror})") from None
        if not os.path.isfile(target):
            raise BadInput(f"tensor {name!r}: external data location {loc!r} is not a regular file")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise BadInput(f"tensor {name!r}: external data offset/length must be integers, got "
                           f"offset={info.get('offset')!r} length={info.get('length')!r}") from None
        if offset < 0 or (length is not None and length < 0):
            raise BadInput(f"tensor {name!r}: negative external data offset {offset} or length {length}")
        need = tensor_nbytes(t)
        if length is None:
            length = need if need is not None else st.st_size - offset
        if offset + length > st.st_size:
            raise BadInput(f"tensor {name!r}: external data needs bytes {offset}..{offset + length} of {loc!r}, "
                           f"which holds {st.st_size} bytes")
        if need is not None and length != need:
            raise BadInput(f"tensor {name!r}: external data length {length} bytes does not match its dims "
                           f"{list(t.dims)} ({need} bytes)")
        out.append(ExternalEntry(t, target, offset, length))
    return out


def read_external_data(entries: list[ExternalEntry]) -> None:
    """Read checked entries into their tensors (exactly the bytes checked, nothing more)."""
    for e in entries:
        try:
            with open(e.path, "rb") as f:
                f.seek(e.offset)
                data = f.read(e.nbytes)
        except OSError as err:
            raise BadInput(f"tensor {e.tensor.name[:80]!r}: cannot read external data ({err.strerror})") from None
        if len(data) != e.nbytes:
            raise BadInput(f"tensor {e.tensor.name[:80]!r}: external data file shrank while reading")
        e.tensor.raw_data = data
        e.tensor.data_location = onnx.TensorProto.DEFAULT
        del e.tensor.external_data[:]


MAX_LAZY_CONST = 64 << 20  # a norm's parameters are read on demand; a weight matrix never is


def read_tensor(t: onnx.TensorProto, base: Path, limit: int = MAX_LAZY_CONST) -> np.ndarray | None:
    """One externally stored tensor's value, read from its checked bytes alone (None if over `limit`):
    how fix reads a layer's parameters without loading the model's weights."""
    need = tensor_nbytes(t)
    if need is None or need > limit:
        return None
    holder = onnx.ModelProto()
    copy = holder.graph.initializer.add()
    copy.CopyFrom(t)
    read_external_data(check_external_data(holder, base))
    return tensor_value(copy)


def copy_external_data(model: onnx.ModelProto, base: Path, data: Path, *, threshold: int = 1024,
                       align: int = 4096, align_above: int = 1 << 20) -> dict[str, ExternalEntry]:
    """Write every external tensor's bytes (read from `base`, streamed, never whole in memory) and every
    inline tensor of `threshold` bytes or more into the new file `data`, and point the tensors there.
    Tensors over `align_above` bytes start at a multiple of `align`, so ONNX Runtime can map them instead
    of copying (its rule for mmap on CPU). Only this model's tensors are written: a data file two models
    share is not copied whole. The kernel copies the bytes (copy_file_range: a reflink where the file
    system has them). Returns, per main-graph initializer copied, where its bytes came from."""
    from onnx.external_data_helper import _get_all_tensors

    # protobuf's Python objects keep their id() only while referenced: every list here stays alive
    tensors = list(_get_all_tensors(model))
    main = list(model.graph.initializer)
    inits = [t for g in _all_graphs(model.graph) for t in g.initializer]
    entries = {id(e.tensor): e for e in check_external_data(model, base)}
    sources = {t.name: entries[id(t)] for t in main if id(t) in entries}
    inits_ids = {id(t) for t in inits}
    with open(data, "xb") as f:  # a fresh name in a staging folder: exclusive, never through a link
        for t in tensors:
            e = entries.get(id(t))
            if e is None and (id(t) not in inits_ids or t.data_location == onnx.TensorProto.EXTERNAL):
                continue  # a Constant's tensor stays in the graph, as onnx's saver leaves it by default
            if e is None:
                if not t.HasField("raw_data"):
                    need = tensor_nbytes(t)
                    if need is None or need < threshold or t.data_type == onnx.TensorProto.STRING:
                        continue
                    t.CopyFrom(numpy_helper.from_array(tensor_value(t), t.name))
                if len(t.raw_data) < threshold:
                    continue
            nbytes = e.nbytes if e is not None else len(t.raw_data)
            if nbytes > align_above and f.tell() % align:
                f.write(b"\0" * (align - f.tell() % align))
            offset = f.tell()
            if e is not None:
                _copy_range(e, f)
            else:
                f.write(t.raw_data)
                t.ClearField("raw_data")
            del t.external_data[:]
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            t.data_location = onnx.TensorProto.EXTERNAL
    return sources


def inline_bytes(model: onnx.ModelProto) -> int:
    """The bytes of the initializers stored in the model itself, from their dims (ByteSize() would
    serialize the whole model to count it: a 2 GB copy)."""
    return sum(tensor_nbytes(t) or 0 for g in _all_graphs(model.graph) for t in g.initializer
               if t.data_location != onnx.TensorProto.EXTERNAL)


PROTO_LIMIT = (1 << 31) - (64 << 20)  # protobuf's 2 GB per message, less a margin for what normonnx adds


def over_proto_limit(model: onnx.ModelProto) -> bool:
    """True when the model's inline tensors would pass protobuf's 2 GB limit on one message (it must then
    be written, and handed to onnx.checker or ORT, with its tensors as external data)."""
    return inline_bytes(model) > PROTO_LIMIT


def _all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    out, stack = [], [graph]
    while stack:
        g = stack.pop()
        out.append(g)
        stack.extend(a.g for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
        stack.extend(sg for n in g.node for a in n.attribute for sg in a.graphs)
    return out


def _copy_range(e: ExternalEntry, dst) -> None:
    dst.flush()
    try:
        src = open(e.path, "rb")
    except OSError as err:
        raise BadInput(f"tensor {e.tensor.name[:80]!r}: cannot read external data ({err.strerror})") from None
    with src:
        left, at, out = e.nbytes, e.offset, dst.tell()
        while left:
            try:
                n = os.copy_file_range(src.fileno(), dst.fileno(), min(left, 1 << 30), at, out)
            except OSError:  # another file system, an old kernel: plain reads, 16 MiB at a time
                src.seek(at)
                n = len(chunk := src.read(min(left, 16 << 20)))
                os.pwrite(dst.fileno(), chunk, out)
            if n == 0:
                raise BadInput(f"tensor {e.tensor.name[:80]!r}: external data file shrank while reading")
            left, at, out = left - n, at + n, out + n
        dst.seek(out)


# -- node and tensor validity --------------------------------------------------------------------
# onnx.defs knows no com.microsoft op: what normonnx reads of the contrib norms, checked the same way
_CONTRIB_SCHEMA = {
    "LayerNormalization": (2, {}), "SimplifiedLayerNormalization": (2, {}),
    "SkipLayerNormalization": (3, {}), "SkipSimplifiedLayerNormalization": (3, {}),
    "GroupNorm": (3, {"groups": onnx.AttributeProto.INT, "activation": onnx.AttributeProto.INT}),
    "SkipGroupNorm": (4, {"groups": onnx.AttributeProto.INT, "activation": onnx.AttributeProto.INT}),
    "EmbedLayerNormalization": (7, {}),
}
_ATTR_TYPES = {"epsilon": onnx.AttributeProto.FLOAT, "axis": onnx.AttributeProto.INT,
               "stash_type": onnx.AttributeProto.INT, "channels_last": onnx.AttributeProto.INT}


def node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name[:80]!r}" if node.name else f"{node.op_type} node (unnamed)"


def check_node(node: onnx.NodeProto, opset: int) -> None:
    """BadInput naming the node if its inputs or attributes break the op's schema (onnx.defs for the
    standard ops, deprecated versions included; normonnx's table for the com.microsoft norms)."""
    where = node_label(node)
    attrs = {a.name: a for a in node.attribute}
    n_in = len(node.input)
    schema = None
    want: dict[str, tuple[int, bool]]  # attribute -> (AttributeProto type, required)
    if node.domain in DEFAULT_DOMAINS:
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except Exception:
            # ORT's own fusions write SimplifiedLayerNormalization in the default domain
            if node.op_type not in _CONTRIB_SCHEMA:
                raise BadInput(f"{where}: no {node.op_type} op exists at opset {opset}") from None
    if schema is not None:
        if not schema.min_input <= n_in <= schema.max_input or not node.input or not node.input[0]:
            raise BadInput(f"{where} has {n_in} inputs; {node.op_type}-{schema.since_version} takes "
                           f"{schema.min_input}..{schema.max_input}")
        # onnx's stubs: OpSchema.AttrType is an IntEnum at runtime
        want = {k: (a.type, a.required) for k, a in schema.attributes.items()}  # type: ignore[misc]
    elif node.domain in (MS, *DEFAULT_DOMAINS) and node.op_type in _CONTRIB_SCHEMA:
        lo, needed = _CONTRIB_SCHEMA[node.op_type]
        if n_in < lo or not node.input[0]:
            raise BadInput(f"{where} has {n_in} inputs; com.microsoft.{node.op_type} takes at least {lo}")
        want = {k: (t, True) for k, t in needed.items()}
        want.update({k: (t, False) for k, t in _ATTR_TYPES.items() if k not in want})
    else:
        return
    for k, (typ, required) in want.items():
        if required and k not in attrs:
            raise BadInput(f"{where} lacks its required attribute {k!r}")
        if k in attrs and attrs[k].type != typ:
            raise BadInput(f"{where}: attribute {k!r} is {onnx.AttributeProto.AttributeType.Name(attrs[k].type)}, "
                           f"must be {onnx.AttributeProto.AttributeType.Name(typ)}")


def tensor_value(t: onnx.TensorProto) -> np.ndarray:
    """The tensor as numpy, or BadInput naming it when its data does not match its dims and type."""
    try:
        onnx.checker.check_tensor(t)
        return numpy_helper.to_array(t)
    except Exception as e:
        msg = first_line(e, 200)
        raise BadInput(f"tensor {t.name[:80]!r} is malformed: {msg[:200]}") from None


# the typed repeated field each elem type stores its values in, when not in raw_data (onnx.proto)
_TYPED_FIELD = {onnx.TensorProto.FLOAT: "float_data", onnx.TensorProto.DOUBLE: "double_data",
                onnx.TensorProto.INT64: "int64_data", onnx.TensorProto.UINT64: "uint64_data",
                onnx.TensorProto.INT32: "int32_data", onnx.TensorProto.INT8: "int32_data",
                onnx.TensorProto.UINT8: "int32_data", onnx.TensorProto.INT16: "int32_data",
                onnx.TensorProto.UINT16: "int32_data", onnx.TensorProto.BOOL: "int32_data",
                onnx.TensorProto.FLOAT16: "int32_data", onnx.TensorProto.BFLOAT16: "int32_data"}


def check_initializers(graph: onnx.GraphProto) -> None:
    """BadInput naming the first initializer whose stored data does not fit its dims and type
    (external tensors are checked by check_external_data instead). The common layouts (raw_data,
    one typed field) are checked by their sizes, without copying weights; anything else goes
    through onnx.checker.check_tensor."""
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        need = tensor_nbytes(t)
        if t.HasField("raw_data") and need is not None:
            if len(t.raw_data) == need:
                continue
        elif need is not None and t.data_type in _TYPED_FIELD and not t.HasField("raw_data"):
            if len(getattr(t, _TYPED_FIELD[t.data_type])) == math.prod(t.dims):
                continue
        try:
            onnx.checker.check_tensor(t)
        except Exception as e:
            msg = first_line(e, 200)
            raise BadInput(f"tensor {t.name[:80]!r} is malformed: {msg[:200]}") from None


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


# -- the index -----------------------------------------------------------------------------------
class Graph:
    """Producer/consumer maps and constant lookup over one graph (nothing is executed).

    `outer` is the enclosing graph's index for a subgraph (If/Loop/Scan bodies read outer values)."""

    def __init__(self, graph: onnx.GraphProto, outer: "Graph | None" = None, prefix: str = "",
                 base: Path | None = None):
        self.graph = graph
        self.outer = outer
        self.base = base  # where external tensors live: given, small ones are read on demand (fix)
        self._read: dict[str, np.ndarray | None] = {}
        self.nodes = list(graph.node)
        self.names = [prefix + (n.name or f"{n.op_type}_{i}") for i, n in enumerate(self.nodes)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:  # "" is ONNX's "no value" (an omitted optional output), never a value read later
                    self.producer[o] = i
            for x in n.input:
                if x:
                    self.consumers.setdefault(x, []).append(i)
        self.initializers = {t.name: t for t in graph.initializer}
        # an initializer that is also a graph input is only a default the caller may override (IR < 4
        # models list every initializer so): its value is not a constant
        self.overridable = {v.name for v in graph.input} & set(self.initializers)
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list] = {}
        for v in list(graph.input) + list(graph.value_info) + list(graph.output):
            tt = v.type.tensor_type
            self.types[v.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                       for d in tt.shape.dim]
        for t in graph.initializer:
            self.types[t.name] = t.data_type
            self.shapes[t.name] = list(t.dims)

    def check_order(self) -> None:
        """BadInput unless every node reads only values computed before it (ONNX requires topological
        order; a graph with a cycle has none, and a walk back through it would never end)."""
        made: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o and o in made:
                    raise BadInput(f"value {o!r} is computed by two nodes ({self.names[made[o]]} and {self.names[i]}): "
                                   "ONNX requires every value name to be assigned once")
                made[o] = i
        for i, n in enumerate(self.nodes):
            for v in n.input:
                j = self.producer.get(v)
                if j is not None and j >= i:
                    raise BadInput(f"the graph is not in topological order: node {self.names[i]} reads {v!r}, which "
                                   f"{'it computes itself' if j == i else f'the later node {self.names[j]} computes'}"
                                   " (a cycle, or nodes out of order: ONNX requires each value computed before use)")

    def node(self, name: str):
        i = self.producer.get(name)
        return (i, self.nodes[i]) if i is not None else (None, None)

    def origin(self, name: str) -> str:
        """Follow a value back through Cast/Identity to where it was computed."""
        for _ in range(16):
            _, n = self.node(name)
            if n is None or n.op_type not in PASS_THROUGH or not n.input:
                return name
            name = n.input[0]
        return name

    def uses(self, name: str, op_type: str | tuple[str, ...]) -> list[int]:
        """Consumers of `name` (looking forward through Cast/Identity) with the given op type."""
        ops = (op_type,) if isinstance(op_type, str) else op_type
        out, frontier, seen = [], [name], set()
        while frontier:
            v = frontier.pop()
            for i in self.consumers.get(v, []):
                if i in seen:
                    continue
                seen.add(i)
                n = self.nodes[i]
                if n.op_type in ops and n.domain in DEFAULT_DOMAINS:
                    out.append(i)
                elif n.op_type in PASS_THROUGH and n.output:
                    frontier.append(n.output[0])
        return out

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output (None if computed or stored externally)."""
        name = self.origin(name)
        if name in self.overridable:
            return None
        if name in self.initializers:
            t = self.initializers[name]
            if t.data_location == onnx.TensorProto.EXTERNAL:
                if self.base is None:
                    return None
                if name not in self._read:
                    self._read[name] = read_tensor(t, self.base)
                return self._read[name]
            return tensor_value(t)
        _, n = self.node(name)
        if n is not None and n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    return tensor_value(a.t)
                if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    return np.asarray(onnx.helper.get_attribute_value(a))
            return None
        if n is not None and n.op_type == "ConstantOfShape" and n.domain in DEFAULT_DOMAINS:
            return self._constant_of_shape(n)
        if n is None and self.outer is not None and name not in self.types:
            return self.outer.const(name)
        return None

    def _constant_of_shape(self, n) -> np.ndarray | None:
        """ConstantOfShape(Shape(x, start, end)) where x's dims are known: the filled array (normonnx fix
        writes a LayerNormalization scale of ones so, to keep symbolic dims symbolic)."""
        _, sh = self.node(n.input[0]) if n.input else (None, None)
        if sh is None or sh.op_type != "Shape" or not sh.input:
            return None
        dims = self.shapes.get(sh.input[0])
        if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
            return None
        start, end = attr(sh, "start", 0), attr(sh, "end", None)
        dims = dims[start:end]
        value = next((tensor_value(a.t) for a in n.attribute if a.name == "value"), np.zeros(1, np.float32))
        return np.full(dims, value.reshape(-1)[0], dtype=value.dtype)

    def is_const(self, name: str) -> bool:
        name = self.origin(name)
        if name in self.initializers:
            return True
        _, n = self.node(name)
        if n is None and self.outer is not None and name not in self.types:
            return self.outer.is_const(name)
        return n is not None and n.op_type == "Constant"

    def from_constants(self, name: str) -> bool:
        """True if `name` is computed from initializers and Constants alone (no graph input reaches
        it): a norm of such a value normalizes weights, not activations. Memoized, iterative."""
        memo = self.__dict__.setdefault("_constness", {})
        stack = [name]
        while stack:
            v = stack[-1]
            if v in memo:
                stack.pop()
                continue
            if v in self.initializers:
                memo[v] = True
                stack.pop()
                continue
            _, n = self.node(v)
            if n is None:  # a graph input, or an outer-scope value
                memo[v] = self.outer.from_constants(v) if self.outer is not None and v not in self.types else False
                stack.pop()
                continue
            if n.op_type == "Constant":
                memo[v] = True
                stack.pop()
                continue
            pending = [i for i in n.input if i and i not in memo]
            if pending:
                stack.extend(pending)
                continue
            memo[v] = all(memo[i] for i in n.input if i)
            stack.pop()
        return memo[name]

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        if v is None or v.size != 1 or not np.issubdtype(v.dtype, np.number):
            return None
        return float(v.reshape(-1)[0])

    def dtype(self, name: str) -> str | None:
        t = self.types.get(name)
        if t is None and self.outer is not None:
            return self.outer.dtype(name)
        return dtype_of_onnx(t)


# -- facts ---------------------------------------------------------------------------------------
def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Op type -> count over the main graph (domain-qualified when not the default domain)."""
    c = Counter(n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}" for n in model.graph.node)
    return dict(sorted(c.items()))


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def set_metadata(model: onnx.ModelProto, values: dict[str, object]) -> None:
    keep = [p for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in values.items():
        entry = model.metadata_props.add()
        entry.key = META_PREFIX + k
        entry.value = v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def model_facts(model: onnx.ModelProto, path: Path | None = None) -> dict:
    facts = {
        "opset": opset_of(model),
        "ops": op_histogram(model),
        "nodes": len(model.graph.node),
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
    }
    if path is not None:
        facts["path"] = str(path)
        facts["size_bytes"] = Path(path).stat().st_size
    return facts
