"""Build the local half of the intake corpus: torch exports put through the tools that rewrite ONNX files
after export — ORT static (QDQ) and dynamic int8 quantization, both float16 converters, onnxslim,
onnxsim, onnxoptimizer and ORT's transformer optimizer — and hand-made graphs named in issue 32; each
file checked to run on ONNX Runtime CPU, with the norms it must contain in OUT_DIR/manifest.json
(format: ground_truth.py).

Runs with the project's Python and its test extras (they carry the post-processors: onnxconverter-common,
onnxslim, onnxsim, onnxoptimizer); tests/test_intake.py builds it in a fixture:

    python tests/intake/build_local.py OUT_DIR [--only FAMILY ...]

A family whose package is missing is skipped with a line saying so. The functions are importable
(`build(out_dir, families)`, `BASES`, `FAMILIES`) for a pytest fixture. Deterministic: torch and numpy
seeded, every norm's parameters and running statistics moved off their init values.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

try:
    from . import ground_truth as gt  # imported as tests/intake (a pytest fixture)
except ImportError:
    import ground_truth as gt  # run as a script

SEED = 0
logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" per export


# == torch modules =====================================================================================
class RMSWrittenOut(nn.Module):
    """RMSNorm as models write it by hand: x * rsqrt(mean(x^2) + eps) * w (a module, so a hook sees it)."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    """pre -> norm -> post."""

    def __init__(self, pre: nn.Module, norm: nn.Module, post: nn.Module):
        super().__init__()
        self.pre, self.norm, self.post = pre, norm, post

    def forward(self, x):
        return self.post(self.norm(self.pre(x)))


class PreActBN(nn.Module):
    """BatchNorm on the input and after a residual Add: neither folds into a Conv."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.bn_in, self.bn_out = nn.BatchNorm2d(c, eps=1e-3), nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.bn_out(x + self.conv(torch.relu(self.bn_in(x)))))


LN3, IMG4, IMG8 = (2, 5, 16), (2, 4, 6, 5), (2, 8, 6, 5)  # distinct dims: a transposed copy is told apart
# name -> (module factory, probe shape, opset, exporter)
BASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int, str]] = {
    "ln-op18-dynamo": (lambda: Block(nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 8)), LN3, 18, "dynamo"),
    "ln-op14-torchscript": (lambda: Block(nn.Linear(16, 16), nn.LayerNorm(16, eps=1e-6), nn.Linear(16, 8)), LN3, 14,
                            "torchscript"),
    "gn-op21-dynamo": (lambda: Block(nn.Conv2d(4, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU()), IMG4, 21, "dynamo"),
    "gn-op17-torchscript": (lambda: Block(nn.Conv2d(4, 8, 3, padding=1), nn.GroupNorm(2, 8, eps=1e-6), nn.SiLU()), IMG4,
                            17, "torchscript"),  # the instance-trick: Reshape/InstanceNormalization/Reshape/Mul/Add
    "rms-op18-dynamo": (lambda: Block(nn.Linear(16, 16), RMSWrittenOut(16), nn.Linear(16, 8)), LN3, 18, "dynamo"),
    "bn-op18-dynamo": (lambda: PreActBN(), IMG8, 18, "dynamo"),
    "in-op18-dynamo": (lambda: Block(nn.Conv2d(4, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True), nn.ReLU()),
                       IMG4, 18, "dynamo"),
}


def randomize(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif p.dim() == 1 and name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p[0].numel()))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return m.eval()


NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.InstanceNorm2d, nn.RMSNorm, RMSWrittenOut)


def torch_norms(module: nn.Module, inputs: tuple) -> list[gt.Norm]:
    """Every norm submodule of `module` as a ground_truth.Norm, with its input and output on `inputs`
    (forward hooks), in call order."""
    seen: list[tuple[nn.Module, np.ndarray, np.ndarray]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append((mod, i[0].detach().double().numpy(),
                                                                      o.detach().double().numpy())))
             for m in module.modules() if isinstance(m, NORM_TYPES)]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return [_norm_of(m, x, y) for m, x, y in seen]


def _np(t):
    return None if t is None else t.detach().double().numpy()


def _norm_of(m: nn.Module, x: np.ndarray, y: np.ndarray) -> gt.Norm:
    nd = x.ndim
    if isinstance(m, nn.LayerNorm):
        axes = tuple(range(nd - len(m.normalized_shape), nd))
        return gt.Norm("ln", m.eps, axes, _np(m.weight), _np(m.bias), x=x, y=y)
    if isinstance(m, (nn.RMSNorm, RMSWrittenOut)):
        eps = m.eps if m.eps is not None else float(torch.finfo(torch.float32).eps)
        return gt.Norm("rms", eps, (nd - 1,), _np(m.weight), None, x=x, y=y)
    if isinstance(m, nn.GroupNorm):
        return gt.Norm("gn", m.eps, tuple(range(1, nd)), _np(m.weight), _np(m.bias), groups=m.num_groups,
                       channel_axis=1, layout="NCHW", x=x, y=y)
    if isinstance(m, nn.BatchNorm2d):
        return gt.Norm("bn", m.eps, (0, 2, 3), _np(m.weight), _np(m.bias), channel_axis=1, mean=_np(m.running_mean),
                       var=_np(m.running_var), layout="NCHW", x=x, y=y)
    if isinstance(m, nn.InstanceNorm2d):
        return gt.Norm("in", m.eps, (2, 3), _np(m.weight), _np(m.bias), channel_axis=1, layout="NCHW", x=x, y=y)
    raise TypeError(type(m).__name__)


@contextlib.contextmanager
def quiet():
    """The exporters print progress and warnings: keep the build log to one line a file."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export(module: nn.Module, inputs: tuple, opset: int, exporter: str, names=("x",), dynamic=None) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp, quiet():
        path = Path(tmp) / "m.onnx"
        if exporter == "dynamo":
            torch.onnx.export(module, inputs, str(path), opset_version=opset, dynamo=True, external_data=False,
                              input_names=list(names), verbose=False)
        else:
            torch.onnx.export(module, inputs, str(path), opset_version=opset, dynamo=False, input_names=list(names),
                              dynamic_axes=dynamic)
        return onnx.load(str(path))


def feeds_for(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The probe arrays in the element types the model's inputs declare (float16 after a converter
    with keep_io_types=False)."""
    dtypes = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.INT64: np.int64,
              TensorProto.INT32: np.int32, TensorProto.DOUBLE: np.float64}
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name in inits or i.name not in arrays:
            continue
        out[i.name] = arrays[i.name].astype(dtypes[i.type.tensor_type.elem_type])
    return out


# == bases: the torch exports every family starts from =================================================
class Base:
    """One base export: the float32 model, the probe and calibration feeds, and its norms."""

    def __init__(self, name: str):
        make, shape, self.opset, self.exporter = BASES[name]
        self.name = name
        seed = SEED + sum(map(ord, name))
        torch.manual_seed(seed)
        self.module = randomize(make(), seed)
        rng = np.random.default_rng(seed)
        self.x = rng.normal(0, 1, shape).astype(np.float32)
        self.calibration = [{"x": rng.normal(0, 1, shape).astype(np.float32)} for _ in range(8)]
        self.norms = torch_norms(self.module, (torch.from_numpy(self.x),))
        self.model = export(self.module, (torch.from_numpy(self.x),), self.opset, self.exporter)
        self.cls = name.split("-")[0]


class Reader:
    """A CalibrationDataReader over seeded batches."""

    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self.it = iter(batches)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):  # onnxruntime >= 1.17 may rewind the reader between passes
        pass


# == families ==========================================================================================
def fam_qdq(out: Path, man: gt.Manifest, bases: dict[str, Base]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    variants = {"qdq": {}, "qdq-perchannel-s8": {"per_channel": True, "activation_type": QuantType.QInt8}}
    for b in bases.values():
        for vname, kw in variants.items():
            if vname != "qdq" and b.cls not in ("ln", "gn", "rms"):
                continue
            with tempfile.TemporaryDirectory() as tmp, quiet():
                src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
                onnx.save(b.model, str(src))
                quantize_static(str(src), str(dst), Reader(b.calibration), quant_format=QuantFormat.QDQ, **kw)
                q = onnx.load(str(dst))
            man.add(out, f"ort-qdq-{b.name}-{vname}", q, producer="ort-qdq", cls=b.cls,
                    options={"quant_format": "QDQ", **{k: str(v) for k, v in kw.items()}, "base": b.name},
                    feeds=feeds_for(q, {"x": b.x}), norms=b.norms)


def fam_dynamic(out: Path, man: gt.Manifest, bases: dict[str, Base]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for b in bases.values():
        with tempfile.TemporaryDirectory() as tmp, quiet():
            src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
            onnx.save(b.model, str(src))
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
            q = onnx.load(str(dst))
        man.add(out, f"ort-dynamic-int8-{b.name}", q, producer="ort-dynamic-int8", cls=b.cls,
                options={"weight_type": "QInt8", "base": b.name}, feeds=feeds_for(q, {"x": b.x}), norms=b.norms)


def fam_fp16(out: Path, man: gt.Manifest, bases: dict[str, Base]) -> None:
    converters = {}
    if importlib.util.find_spec("onnxconverter_common"):
        from onnxconverter_common import float16 as occ
        converters["fp16-onnxconverter-common"] = occ.convert_float_to_float16
    else:
        print("  skipped fp16-onnxconverter-common: onnxconverter-common is not installed")
    from onnxruntime.transformers import float16 as ortf
    converters["fp16-ort-transformers"] = ortf.convert_float_to_float16
    for producer, convert in converters.items():
        for b in bases.values():
            for keep in (True, False):
                with quiet():
                    m = convert(onnx.ModelProto.FromString(b.model.SerializeToString()), keep_io_types=keep)
                man.add(out, f"{producer}-{b.name}-{'keepio' if keep else 'fp16io'}", m, producer=producer, cls=b.cls,
                        options={"keep_io_types": keep, "base": b.name}, feeds=feeds_for(m, {"x": b.x}), norms=b.norms)


def fam_simplifiers(out: Path, man: gt.Manifest, bases: dict[str, Base]) -> None:
    tools: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {}
    if importlib.util.find_spec("onnxslim"):
        import onnxslim
        tools["onnxslim"] = onnxslim.slim
    if importlib.util.find_spec("onnxsim"):
        import onnxsim
        tools["onnxsim"] = lambda m: onnxsim.simplify(m)[0]
    if importlib.util.find_spec("onnxoptimizer"):
        import onnxoptimizer
        tools["onnxoptimizer"] = onnxoptimizer.optimize
    for name in ("onnxslim", "onnxsim", "onnxoptimizer"):
        if name not in tools:
            print(f"  skipped {name}: not installed")
    for producer, tool in tools.items():
        for b in bases.values():
            try:
                with quiet():
                    m = tool(onnx.ModelProto.FromString(b.model.SerializeToString()))
            except Exception as e:  # noqa: BLE001 - a tool's refusal is recorded, not fatal
                man.dropped.append({"file": f"{producer}-{b.name}.onnx", "producer": producer,
                                    "why": f"{producer}: {gt.first_line(e)}"})
                print(f"  DROPPED {producer}-{b.name}: {gt.first_line(e)}")
                continue
            man.add(out, f"{producer}-{b.name}", m, producer=producer, cls=b.cls, options={"base": b.name},
                    feeds=feeds_for(m, {"x": b.x}), norms=b.norms)


# -- ORT's transformer optimizer on tiny BERT and ViT (transformers' model code, random init, no download)
def tiny_bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=16, type_vocab_size=2, attn_implementation="eager")
    model = randomize(BertModel(cfg, add_pooling_layer=False), SEED + 1)
    rng = np.random.default_rng(SEED + 1)
    feeds = {"input_ids": rng.integers(0, 100, (2, 8)).astype(np.int64),
             "attention_mask": np.ones((2, 8), np.int64), "token_type_ids": rng.integers(0, 2, (2, 8)).astype(np.int64)}
    return model, feeds


def tiny_vit():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, attn_implementation="eager")
    model = randomize(ViTModel(cfg, add_pooling_layer=False), SEED + 2)
    feeds = {"pixel_values": np.random.default_rng(SEED + 2).normal(0, 1, (2, 3, 16, 16)).astype(np.float32)}
    return model, feeds


class _FirstOutput(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *args):
        return self.m(*args).last_hidden_state


def fam_ort_transformers(out: Path, man: gt.Manifest, bases: dict[str, Base]) -> None:
    if not importlib.util.find_spec("transformers"):
        print("  skipped ort-transformer-optimizer: transformers is not installed")
        return
    from onnxruntime.transformers.optimizer import optimize_model

    for name, make, mtype in (("bert", tiny_bert, "bert"), ("vit", tiny_vit, "vit")):
        model, arrays = make()
        wrapped = _FirstOutput(model).eval()
        inputs = tuple(torch.from_numpy(v) for v in arrays.values())
        norms = torch_norms(wrapped, inputs)
        for exporter, opset in (("torchscript", 14), ("dynamo", 18)):
            base = export(wrapped, inputs, opset, exporter, names=tuple(arrays))
            for fp16 in (False, True):
                with tempfile.TemporaryDirectory() as tmp, quiet():
                    src = Path(tmp) / "f.onnx"
                    onnx.save(base, str(src))
                    opt = optimize_model(str(src), model_type=mtype, num_heads=4, hidden_size=32)
                    if fp16:
                        opt.convert_float_to_float16(keep_io_types=True)
                    m = opt.model
                fname = f"ort-transformer-optimizer-{name}-op{opset}-{exporter}" + ("-fp16" if fp16 else "")
                man.add(out, fname, m, producer="ort-transformer-optimizer", cls=name,
                        options={"model_type": mtype, "exporter": exporter, "fp16": fp16},
                        feeds=feeds_for(m, arrays), norms=norms)


# -- hand-made graphs (issue 32) ---------------------------------------------------------------------------
def _ln(x, axes, eps, w=None, b=None):
    mean = x.mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    return y * (w if w is not None else 1) + (b if b is not None else 0)


def _gn(x, groups, eps, w, b):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    y = _ln(g, (2,), eps).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return y * w.reshape(shape) + b.reshape(shape)


def _model(nodes, inits, inp, out, opset, in_type=TensorProto.FLOAT, out_type=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info(inp[0], in_type, inp[1])],
                              [helper.make_tensor_value_info(out[0], out_type, out[1])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="normonnx-intake")
    m.ir_version = 9
    return m


def fam_hand(out: Path, man: gt.Manifest, bases: dict[str, Base]) -> None:
    rng = np.random.default_rng(SEED + 32)
    # two GroupNormalization-21 in a row, the second reading the first's output, sharing scale and bias
    x = rng.normal(0, 1, IMG8).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 8).astype(np.float32), rng.normal(0, 0.5, 8).astype(np.float32)
    y1 = _gn(x.astype(np.float64), 4, 1e-5, w, b)
    y2 = _gn(y1, 4, 1e-5, w, b)
    m = _model([helper.make_node("GroupNormalization", ["x", "s", "b"], ["h"], num_groups=4, epsilon=1e-5),
                helper.make_node("GroupNormalization", ["h", "s", "b"], ["y"], num_groups=4, epsilon=1e-5)],
               {"s": w, "b": b}, ("x", list(IMG8)), ("y", list(IMG8)), 21)
    norms = [gt.Norm("gn", 1e-5, (1, 2, 3), w, b, groups=4, channel_axis=1, layout="NCHW", x=x.astype(np.float64),
                     y=y1),
             gt.Norm("gn", 1e-5, (1, 2, 3), w, b, groups=4, channel_axis=1, layout="NCHW", x=y1, y=y2)]
    man.add(out, "hand-gn21-twice-shared-params", m, producer="hand-made", cls="gn", options={},
            feeds={"x": x}, norms=norms, notes="issue 32: fix rewrites the first and refuses the second")

    # a float32 model with a float16 LayerNorm island between Casts: native and written out
    x = rng.normal(0, 1, LN3).astype(np.float32)
    wm = (rng.normal(0, 1, (16, 16)) / 4).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 16).astype(np.float16), rng.normal(0, 0.5, 16).astype(np.float16)
    h = (x.astype(np.float64) @ wm).astype(np.float16).astype(np.float64)
    y = _ln(h, (2,), 1e-5, w.astype(np.float64), b.astype(np.float64))
    pre = [helper.make_node("MatMul", ["x", "wm"], ["h32"]),
           helper.make_node("Cast", ["h32"], ["h16"], to=TensorProto.FLOAT16)]
    post = [helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT)]
    native = [helper.make_node("LayerNormalization", ["h16", "w", "b"], ["y16"], axis=-1, epsilon=1e-5)]
    written = [helper.make_node("ReduceMean", ["h16", "ax"], ["mu"]), helper.make_node("Sub", ["h16", "mu"], ["d"]),
               helper.make_node("Mul", ["d", "d"], ["d2"]), helper.make_node("ReduceMean", ["d2", "ax"], ["var"]),
               helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
               helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "w"], ["nw"]),
               helper.make_node("Add", ["nw", "b"], ["y16"])]
    for form, body, extra in (("native", native, {}), ("written-out", written, {
            "ax": np.array([-1], np.int64), "eps": np.array(1e-5, np.float16)})):
        m = _model(pre + body + post, {"wm": wm, "w": w, "b": b, **extra}, ("x", list(LN3)), ("y", list(LN3)), 18)
        man.add(out, f"hand-ln-fp16-island-{form}", m, producer="hand-made", cls="ln", options={"form": form},
                feeds={"x": x}, norms=[gt.Norm("ln", 1e-5, (2,), w, b, x=h, y=y)],
                notes="issue 32: a float32 model with a float16 LayerNorm between Casts")

    # a written-out LayerNorm right after a Reshape (a flat Dense output split into tokens)
    x = rng.normal(0, 1, (2, 80)).astype(np.float32)
    wm = (rng.normal(0, 1, (80, 80)) / 9).astype(np.float32)
    w, b = rng.uniform(0.5, 1.5, 16).astype(np.float32), rng.normal(0, 0.5, 16).astype(np.float32)
    h = (x.astype(np.float64) @ wm).reshape(LN3)
    y = _ln(h, (2,), 1e-5, w, b)
    nodes = [helper.make_node("MatMul", ["x", "wm"], ["flat"]), helper.make_node("Reshape", ["flat", "shape"], ["t"]),
             helper.make_node("ReduceMean", ["t", "ax"], ["mu"]), helper.make_node("Sub", ["t", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2", "ax"], ["var"]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "w"], ["nw"]),
             helper.make_node("Add", ["nw", "b"], ["y"])]
    m = _model(nodes, {"wm": wm, "shape": np.array(LN3, np.int64), "ax": np.array([-1], np.int64),
                       "two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32), "w": w, "b": b},
               ("x", [2, 80]), ("y", list(LN3)), 18)
    man.add(out, "hand-ln-after-reshape", m, producer="hand-made", cls="ln", options={}, feeds={"x": x},
            norms=[gt.Norm("ln", 1e-5, (2,), w, b, x=h, y=y)], notes="issue 32: reported as gn today")


def fam_torch(out: Path, man: gt.Manifest, bases: dict[str, Base]) -> None:
    """The bases themselves: the reference point every other family is measured against."""
    for b in bases.values():
        man.add(out, f"torch-{b.name}", b.model, producer="torch-export", cls=b.cls,
                options={"exporter": b.exporter}, feeds={"x": b.x}, norms=b.norms)


FAMILIES: dict[str, Callable[[Path, gt.Manifest, dict[str, Base]], None]] = {
    "torch": fam_torch, "qdq": fam_qdq, "dynamic-int8": fam_dynamic, "fp16": fam_fp16,
    "simplifiers": fam_simplifiers, "ort-transformers": fam_ort_transformers, "hand": fam_hand}


def build(out_dir: Path, families: list[str] | None = None) -> gt.Manifest:
    """Write the chosen families (default: all) to out_dir and return the manifest (also written)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    man = gt.Manifest("build_local.py", SEED)
    t0 = time.time()
    bases = {name: Base(name) for name in BASES}
    print(f"bases: {len(bases)} torch exports ({time.time() - t0:.0f} s)", flush=True)
    for fam in families or list(FAMILIES):
        t0 = time.time()
        print(f"{fam}:", flush=True)
        FAMILIES[fam](out_dir, man, bases)
        print(f"  ({time.time() - t0:.0f} s)", flush=True)
    man.write(out_dir)
    return man


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--only", nargs="+", choices=list(FAMILIES), help="families to build (default: all)")
    args = ap.parse_args(argv)
    man = build(args.out_dir, args.only)
    print(f"wrote {args.out_dir / 'manifest.json'}: {len(man.files)} files, "
          f"{sum(len(f['expected']) for f in man.files)} expected norms, {len(man.dropped)} dropped, "
          f"{len(man.duplicates)} duplicates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
