"""The scan test corpus, generated in code (no binaries): realistic PyTorch blocks exported by real
exporters, and hand-built decomposed chains the way exporters and people write them. Each builder
writes a model and returns the detections it must yield, as (kind, form) in graph order."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from normonnx.exporting.exporters import quiet_export


# -- PyTorch blocks -------------------------------------------------------------------------------
class EncoderLayer(nn.Module):
    """A post-norm transformer encoder layer written out (torch's own uses fused SDPA the TorchScript
    exporter cannot write)."""

    def __init__(self, d: int = 32, heads: int = 4, ff: int = 64):
        super().__init__()
        self.h, self.d = heads, d
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.h, d // self.h).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.h), dim=-1)
        x = self.ln1(x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d)))
        return self.ln2(x + self.ff2(torch.relu(self.ff1(x))))


class UNetBlock(nn.Module):
    def __init__(self, c: int = 16, groups: int = 4):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.n1, self.n2 = nn.GroupNorm(groups, c), nn.GroupNorm(groups, c)

    def forward(self, x):
        h = nn.functional.silu(self.n1(self.c1(x)))
        return h + nn.functional.silu(self.n2(self.c2(h)))


class PreActResBlock(nn.Module):
    """BatchNorm on the block input and after the residual Add: neither can fold into a Conv."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.bn_in, self.bn_out = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.bn_out(x + self.c2(torch.relu(self.c1(torch.relu(self.bn_in(x)))))))


class StyleBlock(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.n1, self.n2 = nn.InstanceNorm2d(c, affine=True), nn.InstanceNorm2d(c, affine=True)

    def forward(self, x):
        return x + self.n2(self.c2(torch.relu(self.n1(self.c1(x)))))


class RMSDecoderBlock(nn.Module):
    def __init__(self, d: int = 32):
        super().__init__()
        self.n1, self.n2 = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.attn, self.up, self.down = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.down(nn.functional.silu(self.up(self.n2(x))))


def _randomize(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("bias") and p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return m.eval()


def export_block(module: nn.Module, shape, path: Path, opset: int, exporter: str) -> Path:
    x = torch.randn(shape)
    with quiet_export([]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(_randomize(module), (x,), str(path), opset_version=opset, dynamo=True,
                              external_data=False, verbose=False)
        else:
            torch.onnx.export(_randomize(module), (x,), str(path), opset_version=opset, dynamo=False)
    return path


# name -> (module factory, input shape, opset, exporter, expected detections)
TORCH_CORPUS = {
    "encoder-op14-torchscript": (EncoderLayer, (2, 5, 32), 14, "torchscript", [("ln", "decomposed")] * 2),
    "encoder-op17-torchscript": (EncoderLayer, (2, 5, 32), 17, "torchscript", [("ln", "native")] * 2),
    "encoder-op14-dynamo": (EncoderLayer, (2, 5, 32), 14, "dynamo", [("ln", "native")] * 2),
    "encoder-op17-dynamo": (EncoderLayer, (2, 5, 32), 17, "dynamo", [("ln", "native")] * 2),
    "unet-op18-dynamo": (UNetBlock, (2, 4, 8, 8), 18, "dynamo", [("gn", "instance-trick")] * 2),
    "unet-op17-torchscript": (UNetBlock, (2, 4, 8, 8), 17, "torchscript", [("gn", "instance-trick")] * 2),
    "unet-op21-dynamo": (UNetBlock, (2, 4, 8, 8), 21, "dynamo", [("gn", "native")] * 2),
    "resnet-op17-torchscript": (PreActResBlock, (2, 8, 8, 8), 17, "torchscript", [("bn", "native")] * 2),
    "resnet-op18-dynamo": (PreActResBlock, (2, 8, 8, 8), 18, "dynamo", [("bn", "native")] * 2),
    "style-op17-torchscript": (StyleBlock, (2, 8, 8, 8), 17, "torchscript", [("in", "native")] * 2),
    "style-op18-dynamo": (StyleBlock, (2, 8, 8, 8), 18, "dynamo", [("in", "native")] * 2),
    "rms-decoder-op18-dynamo": (RMSDecoderBlock, (2, 5, 32), 18, "dynamo", [("rms", "decomposed")] * 2),
    "rms-decoder-op23-dynamo": (RMSDecoderBlock, (2, 5, 32), 23, "dynamo", [("rms", "native")] * 2),
}


# -- hand-built ONNX graphs -----------------------------------------------------------------------
class Builder:
    def __init__(self, opset: int = 18):
        self.opset, self.nodes, self.inits, self.n = opset, [], [], 0

    def name(self, p="t"):
        self.n += 1
        return f"{p}{self.n}"

    def const(self, value, as_node: bool = False, dtype=np.float32):
        nm = self.name("c")
        arr = np.asarray(value, dtype=dtype)
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [nm], value=numpy_helper.from_array(arr)))
        else:
            self.inits.append(numpy_helper.from_array(arr, nm))
        return nm

    def op(self, op_type, *inputs, domain="", **attrs):
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, domain=domain, **attrs))
        return out

    def mean(self, x, axes):
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.const(axes, dtype=np.int64))
        return self.op("ReduceMean", x, axes=list(axes))

    def model(self, x_shape, y, x_type=TensorProto.FLOAT, extra_inputs=(), domains=(), y_type=None) -> onnx.ModelProto:
        out_shape = None
        g = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", x_type, x_shape)] + list(extra_inputs),
                              [helper.make_tensor_value_info(y, y_type or x_type, out_shape)], self.inits)
        ops = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, 1) for d in domains]
        return helper.make_model(g, opset_imports=ops)


def ln_chain(*, square="pow", denom="div_sqrt", affine=True, fp16=False, opset=18, eps_node=False, eps=1e-5,
             naive=False, eps_outside=False, rms=False, d=16, island=True) -> onnx.ModelProto:
    """LayerNorm (or RMSNorm) over the last dim of a (2, 4, d) input, written out op by op.
    fp16: a float16 input, computed in a float32 Cast island (or, island=False, in float16 itself)."""
    b = Builder(opset)
    x = "x"
    cdt = np.float16 if fp16 and not island else np.float32  # the dtype the chain computes in
    if fp16 and island:
        x = b.op("Cast", x, to=TensorProto.FLOAT)  # the float32 island
    sq = (lambda v: b.op("Pow", v, b.const(2.0, dtype=cdt))) if square == "pow" else (lambda v: b.op("Mul", v, v))
    if rms:
        num = x
        var = b.mean(sq(x), [-1])
    else:
        m = b.mean(x, [-1])
        num = b.op("Sub", x, m)
        var = b.op("Sub", b.mean(sq(x), [-1]), b.op("Mul", m, m)) if naive else b.mean(sq(num), [-1])
    e = b.const(eps, as_node=eps_node, dtype=cdt)
    if eps_outside:
        den = b.op("Add", b.op("Sqrt", var), e)
        y = b.op("Div", num, den)
    else:
        ve = b.op("Add", var, e)
        if denom == "div_sqrt":
            y = b.op("Div", num, b.op("Sqrt", ve))
        elif denom == "mul_recip":
            y = b.op("Mul", num, b.op("Reciprocal", b.op("Sqrt", ve)))
        elif denom == "rsqrt_div_one":  # torch.rsqrt through the TorchScript exporter
            y = b.op("Mul", num, b.op("Div", b.const(1.0, dtype=cdt), b.op("Sqrt", ve)))
        else:
            y = b.op("Div", num, b.op("Pow", ve, b.const(0.5, dtype=cdt)))
    if fp16 and island:
        y = b.op("Cast", y, to=TensorProto.FLOAT16)
    rng = np.random.default_rng(3)
    pdt = np.float16 if fp16 else np.float32
    if affine:
        y = b.op("Mul", y, b.const(rng.uniform(0.5, 1.5, d), dtype=pdt))
        if not rms:
            y = b.op("Add", y, b.const(rng.normal(0, 0.5, d), dtype=pdt))
    return b.model([2, 4, d], y, TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT)


def centering_only() -> onnx.ModelProto:
    b = Builder()
    y = b.op("Sub", "x", b.mean("x", [-1]))
    return b.model([2, 4, 16], y)


def global_average_pool() -> onnx.ModelProto:
    b = Builder()
    y = b.op("Sub", "x", b.op("GlobalAveragePool", "x"))
    return b.model([2, 8, 4, 4], y)


def contrib_ops() -> onnx.ModelProto:
    """ORT contrib norms in a row: com.microsoft LayerNormalization and SimplifiedLayerNormalization,
    SimplifiedLayerNormalization as ORT's own fusion writes it (default domain), then the Skip* ops."""
    b = Builder(17)
    rng = np.random.default_rng(1)
    y = b.op("LayerNormalization", "x", b.const(rng.uniform(0.5, 1.5, 16)), b.const(rng.normal(0, 0.5, 16)),
             domain="com.microsoft", axis=-1, epsilon=1e-5)
    y = b.op("SimplifiedLayerNormalization", y, b.const(rng.uniform(0.5, 1.5, 16)), domain="com.microsoft",
             axis=-1, epsilon=1e-6)
    y = b.op("SimplifiedLayerNormalization", y, b.const(rng.uniform(0.5, 1.5, 16)), axis=-1, epsilon=1e-6)
    y = b.op("SkipLayerNormalization", y, "skip", b.const(rng.uniform(0.5, 1.5, 16)),
             b.const(rng.normal(0, 0.5, 16)), domain="com.microsoft", epsilon=1e-5)
    y = b.op("SkipSimplifiedLayerNormalization", y, "skip", b.const(rng.uniform(0.5, 1.5, 16)),
             domain="com.microsoft", epsilon=1e-5)
    return b.model([2, 4, 16], y, extra_inputs=[helper.make_tensor_value_info("skip", TensorProto.FLOAT, [2, 4, 16])],
                   domains=("com.microsoft",))


def contrib_groupnorm() -> onnx.ModelProto:
    """com.microsoft GroupNorm (NCHW here: channels_last=0)."""
    b = Builder(17)
    rng = np.random.default_rng(4)
    y = b.op("GroupNorm", "x", b.const(rng.uniform(0.5, 1.5, 8)), b.const(rng.normal(0, 0.5, 8)),
             domain="com.microsoft", groups=2, epsilon=1e-5, activation=0, channels_last=0)
    return b.model([2, 8, 4, 4], y, domains=("com.microsoft",))


def contrib_skip_with_bias() -> onnx.ModelProto:
    """Skip*LayerNormalization with the bias input ORT's BERT/GPT-2 fusions write (added before the norm)."""
    b = Builder(17)
    rng = np.random.default_rng(5)
    y = b.op("SkipLayerNormalization", "x", "skip", b.const(rng.uniform(0.5, 1.5, 16)),
             b.const(rng.normal(0, 0.5, 16)), b.const(rng.normal(0, 0.5, 16)), domain="com.microsoft", epsilon=1e-5)
    y = b.op("SkipSimplifiedLayerNormalization", y, "skip", b.const(rng.uniform(0.5, 1.5, 16)),
             b.const(rng.normal(0, 0.5, 16)), domain="com.microsoft", epsilon=1e-6)
    return b.model([2, 4, 16], y, extra_inputs=[helper.make_tensor_value_info("skip", TensorProto.FLOAT, [2, 4, 16])],
                   domains=("com.microsoft",))


def contrib_nhwc_groupnorms() -> onnx.ModelProto:
    """What ORT's UNet/VAE optimizer writes: com.microsoft SkipGroupNorm and GroupNorm, NHWC, SiLU fused."""
    b = Builder(17)
    rng = np.random.default_rng(6)
    y = b.op("GroupNorm", "x", b.const(rng.uniform(0.5, 1.5, 8)), b.const(rng.normal(0, 0.5, 8)),
             domain="com.microsoft", groups=2, epsilon=1e-5, activation=1, channels_last=1)
    y = b.op("SkipGroupNorm", y, b.const(rng.uniform(0.5, 1.5, 8)), b.const(rng.normal(0, 0.5, 8)), "x",
             b.const(rng.normal(0, 0.5, 8)), domain="com.microsoft", groups=2, epsilon=1e-5, activation=0,
             channels_last=1)
    return b.model([2, 4, 4, 8], y, domains=("com.microsoft",))


def embed_layer_norm() -> onnx.ModelProto:
    """com.microsoft EmbedLayerNormalization, as ORT's BERT optimizer writes it: LN(word + position + segment)."""
    b = Builder(17)
    rng = np.random.default_rng(7)
    emb = [b.const(rng.normal(0, 1, (n, 16))) for n in (50, 8, 2)]
    y = b.op("EmbedLayerNormalization", "x", "segment_ids", *emb, b.const(rng.uniform(0.5, 1.5, 16)),
             b.const(rng.normal(0, 0.5, 16)), domain="com.microsoft", epsilon=1e-12)
    return b.model([2, 8], y, x_type=TensorProto.INT32, domains=("com.microsoft",),
                   extra_inputs=[helper.make_tensor_value_info("segment_ids", TensorProto.INT32, [2, 8])],
                   y_type=TensorProto.FLOAT)


def weight_standardisation() -> onnx.ModelProto:
    """A BatchNormalization over a Conv weight initializer (StdConv through TorchScript), then the Conv."""
    b = Builder(17)
    rng = np.random.default_rng(8)
    w = b.const(rng.normal(0, 1, (1, 8, 72)))
    mean = b.op("ReduceMean", w, axes=[0, 2], keepdims=0)
    d = b.op("Sub", w, b.op("Unsqueeze", mean, b.const(np.array([0, 2]), dtype=np.int64)))
    var = b.op("ReduceMean", b.op("Mul", d, d), axes=[0, 2], keepdims=0)
    ws = b.op("BatchNormalization", w, b.const(np.ones(8)), b.const(np.zeros(8)), mean, var, epsilon=1e-6,
              training_mode=0)
    y = b.op("Conv", "x", b.op("Reshape", ws, b.const(np.array([8, 8, 3, 3]), dtype=np.int64)), pads=[1, 1, 1, 1])
    return b.model([2, 8, 6, 6], y)


def gn18_native() -> onnx.ModelProto:
    b = Builder(18)
    rng = np.random.default_rng(2)
    y = b.op("GroupNormalization", "x", b.const(rng.uniform(0.5, 1.5, 2)), b.const(rng.normal(0, 0.5, 2)),
             num_groups=2, epsilon=1e-5)
    return b.model([2, 8, 4, 4], y)


# name -> (builder, expected detections)
HAND_CORPUS = {
    "ln-pow-div-sqrt": (lambda: ln_chain(), [("ln", "decomposed")]),
    "ln-mul-recip-attr-axes": (lambda: ln_chain(square="mul", denom="mul_recip", opset=13), [("ln", "decomposed")]),
    "ln-div-pow-const-eps-noaffine": (lambda: ln_chain(denom="div_pow", eps_node=True, affine=False),
                                      [("ln", "decomposed")]),
    "ln-fp16-cast-island": (lambda: ln_chain(fp16=True), [("ln", "decomposed")]),
    "ln-fp16-no-island": (lambda: ln_chain(fp16=True, island=False), [("ln", "decomposed")]),
    "ln-naive-variance": (lambda: ln_chain(naive=True), [("ln", "decomposed")]),
    "ln-eps-outside-sqrt": (lambda: ln_chain(eps_outside=True), [("ln", "decomposed")]),
    "rms-pow-mul-recip": (lambda: ln_chain(rms=True, denom="mul_recip"), [("rms", "decomposed")]),
    "rms-mul-div-sqrt-attr-axes": (lambda: ln_chain(rms=True, square="mul", opset=13), [("rms", "decomposed")]),
    "ln-rsqrt-div-one": (lambda: ln_chain(denom="rsqrt_div_one", opset=17), [("ln", "decomposed")]),
    "rms-rsqrt-div-one": (lambda: ln_chain(rms=True, denom="rsqrt_div_one", opset=17), [("rms", "decomposed")]),
    "contrib-skip-with-bias": (contrib_skip_with_bias, [("ln", "contrib"), ("rms", "contrib")]),
    "contrib-nhwc-groupnorms": (contrib_nhwc_groupnorms, [("gn", "contrib"), ("gn", "contrib")]),
    "embed-layer-norm": (embed_layer_norm, [("ln", "contrib")]),
    "weight-standardisation": (weight_standardisation, []),
    "centering-only": (centering_only, []),
    "global-average-pool": (global_average_pool, []),
    "contrib-ops": (contrib_ops, [("ln", "contrib"), ("rms", "contrib"), ("rms", "contrib"), ("ln", "contrib"),
                                  ("rms", "contrib")]),
    "contrib-groupnorm": (contrib_groupnorm, [("gn", "contrib")]),
    "gn18-native-per-group": (gn18_native, [("gn", "native")]),
}


def build(name: str, folder: Path) -> tuple[Path, list[tuple[str, str]]]:
    path = Path(folder) / f"{name}.onnx"
    if name in TORCH_CORPUS:
        factory, shape, opset, exporter, expected = TORCH_CORPUS[name]
        export_block(factory(), shape, path, opset, exporter)
        return path, expected
    builder, expected = HAND_CORPUS[name]
    onnx.save(builder(), str(path))
    return path, expected


# -- models `normonnx fix` must repair (issue 13): real exporters, the risky forms ------------------
class NaiveRMSBlock(nn.Module):
    """RMSNorm written by hand (x * rsqrt(mean(x^2) + eps) * w), no float32 upcast: in float16, x^2
    overflows at |x| ~ 256."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.lin, self.w = nn.Linear(d, d), nn.Parameter(torch.ones(d))

    def forward(self, x):
        h = self.lin(x)
        return x + h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w


def unet_gn18_with_affine(path: Path) -> Path:
    """UNetBlock through dynamo at opset 18 with the GroupNorm translation normonnx's native variant
    uses: GroupNormalization-18 (identity per-group scale) then a per-channel Mul/Add."""
    from normonnx.exporting.translations import _gn_dynamo_translation
    from normonnx.core.spec import NormSpec

    spec = NormSpec.make("gn", shape=(2, 16, 8, 8), groups=4)
    with quiet_export([]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_randomize(UNetBlock()), (torch.randn(2, 4, 8, 8),), str(path), opset_version=18,
                          dynamo=True, external_data=False, verbose=False,
                          custom_translation_table=_gn_dynamo_translation(spec, 18))
    return path


def export_half(module: nn.Module, shape, path: Path, opset: int, exporter: str) -> Path:
    module = _randomize(module).half()
    x = torch.randn(shape).half()
    with quiet_export([]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), opset_version=opset, dynamo=exporter == "dynamo",
                          **({"external_data": False} if exporter == "dynamo" else {}))
    return path


def contrib_groupnorm_nhwc_silu() -> onnx.ModelProto:
    """com.microsoft GroupNorm as ORT's UNet optimizer writes it: NHWC input, SiLU fused; shapes declared."""
    b = Builder(17)
    rng = np.random.default_rng(9)
    y = b.op("GroupNorm", "x", b.const(rng.uniform(0.5, 1.5, 8)), b.const(rng.normal(0, 0.5, 8)),
             domain="com.microsoft", groups=2, epsilon=1e-5, activation=1, channels_last=1)
    m = b.model([2, 4, 4, 8], y, domains=("com.microsoft",))
    for d in (2, 4, 4, 8):
        m.graph.output[0].type.tensor_type.shape.dim.add().dim_value = d
    return m


# -- models for `scan --activations` (issue 15) -----------------------------------------------------
class MassiveActivationsBlock(nn.Module):
    """A pre-norm transformer MLP block whose residual stream carries a few huge channels (the "massive
    activations" real LMs have): the LayerNorm's input deviates by ~600 from its mean."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.ln, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 64), nn.Linear(64, d)
        massive = torch.zeros(d)
        massive[3], massive[17] = 600.0, -450.0
        self.register_buffer("massive", massive)

    def forward(self, x):
        h = x + self.massive
        return h + self.down(torch.relu(self.up(self.ln(h))))


class ResidualGNBlock(nn.Module):
    """A UNet ResNet block as diffusers writes it: x + Conv(SiLU(GroupNorm(x))). The GroupNorm sees the
    block's input, so a common offset on it reaches the norm intact."""

    def __init__(self, c: int = 8, groups: int = 4):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(groups, c)

    def forward(self, x):
        return x + self.conv(nn.functional.silu(self.norm(x)))


# -- issue 19: a UNet-style Conv -> GroupNorm(8, 32) -> SiLU block at a realistic size ---------------
class GNSiluBlock(nn.Module):
    """Two Conv -> GroupNorm(8, 32) -> SiLU stages at 32x32: 4 channels per group, 4096 elements per
    group, the size at which ORT CPU's InstanceNormalization misses a zero-variance group."""

    def __init__(self, c: int = 32, groups: int = 8):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.n1, self.n2 = nn.GroupNorm(groups, c), nn.GroupNorm(groups, c)

    def forward(self, x):
        h = nn.functional.silu(self.n1(self.c1(x)))
        return nn.functional.silu(self.n2(self.c2(h)))


class GNSiluStack(nn.Module):
    """`stages` Conv -> GroupNorm(8, 32) -> SiLU stages at 16x16: a fix with that many layers to validate and rewrite
    (tests/test_interrupts.py stops it part-way)."""

    def __init__(self, stages: int, c: int = 32, groups: int = 8):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(4 if i == 0 else c, c, 3, padding=1) for i in range(stages)])
        self.norms = nn.ModuleList([nn.GroupNorm(groups, c) for _ in range(stages)])

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = nn.functional.silu(norm(conv(x)))
        return x


# the three ways torch writes it: GroupNormalization-21, and the instance-trick at 18 (dynamo) and 17
GN_SILU_EXPORTS = {"op21-dynamo": (21, "dynamo"), "op18-dynamo": (18, "dynamo"), "op17-torchscript": (17, "torchscript")}


def gn_silu_block(path: Path, opset: int, exporter: str) -> Path:
    return export_block(GNSiluBlock(), (1, 4, 32, 32), path, opset, exporter)


def gn_silu_stack(path: Path, stages: int) -> Path:
    return export_block(GNSiluStack(stages), (1, 4, 16, 16), path, 21, "dynamo")


# -- models at their real size (external data) ------------------------------------------------------
def external_decoder(path: Path, hidden: int, layers: int, vocab: int = 8192, seq: int = 128,
                     inline: bool = False) -> int:
    """A GPT-2-shaped decoder with every weight in one external-data file PATH.data, streamed there as
    drawn (a 2 GB model holds one matrix in memory); the weights' size in bytes. Per layer two residual
    blocks: TorchScript's decomposed LayerNorm at opset 14, MatMul h->3h, Relu, MatMul 3h->h, and likewise
    with 4h (14*h^2 weights a layer); then a final LayerNorm whose variance is E[x^2]-E[x]^2, which fails
    at large offsets, so fix has a layer to rewrite (with --opset 17) and a whole model to compare.
    inline: then every weight moved into the .onnx, as torch writes a model under 2 GB (the data file removed).
    benchmarks/large_model.py builds it at 1 and 2 GB; the tests, at a few MB."""
    rng = np.random.default_rng(0)
    data = path.with_name(path.name + ".data")
    inits, nodes = [], []
    with open(data, "wb") as f:
        def weight(name: str, shape: tuple[int, ...], value: float | None = None) -> str:
            a = (np.full(shape, value, np.float32) if value is not None
                 else (rng.standard_normal(shape, dtype=np.float32) * 0.02))
            t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=shape)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data.name), ("offset", str(f.tell())), ("length", str(a.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            f.write(a.tobytes())
            inits.append(t)
            return name

        def layer_norm(x: str, p: str, one_pass: bool = False) -> str:
            # TorchScript's decomposed LayerNorm at opset 14; one_pass: variance as E[x^2] - E[x]^2
            n = [helper.make_node("ReduceMean", [x], [f"{p}.mean"], axes=[-1], name=f"{p}/ReduceMean"),
                 helper.make_node("Sub", [x, f"{p}.mean"], [f"{p}.d"], name=f"{p}/Sub")]
            if one_pass:
                n += [helper.make_node("Mul", [x, x], [f"{p}.xx"], name=f"{p}/Square"),
                      helper.make_node("ReduceMean", [f"{p}.xx"], [f"{p}.ex2"], axes=[-1], name=f"{p}/ReduceMean_1"),
                      helper.make_node("Mul", [f"{p}.mean", f"{p}.mean"], [f"{p}.m2"], name=f"{p}/MeanSquare"),
                      helper.make_node("Sub", [f"{p}.ex2", f"{p}.m2"], [f"{p}.var"], name=f"{p}/Variance")]
            else:
                n += [helper.make_node("Pow", [f"{p}.d", "two"], [f"{p}.sq"], name=f"{p}/Pow"),
                      helper.make_node("ReduceMean", [f"{p}.sq"], [f"{p}.var"], axes=[-1], name=f"{p}/ReduceMean_1")]
            n += [helper.make_node("Add", [f"{p}.var", "eps"], [f"{p}.ve"], name=f"{p}/Add"),
                 helper.make_node("Sqrt", [f"{p}.ve"], [f"{p}.std"], name=f"{p}/Sqrt"),
                 helper.make_node("Div", [f"{p}.d", f"{p}.std"], [f"{p}.n"], name=f"{p}/Div"),
                 helper.make_node("Mul", [f"{p}.n", weight(f"{p}.weight", (hidden,), 1.0)], [f"{p}.s"],
                                  name=f"{p}/Mul"),
                 helper.make_node("Add", [f"{p}.s", weight(f"{p}.bias", (hidden,), 0.0)], [f"{p}.out"],
                                  name=f"{p}/Add_1")]
            nodes.extend(n)
            return f"{p}.out"

        def block(x: str, p: str, wide: int) -> str:
            h = layer_norm(x, f"{p}.ln")
            nodes.extend([
                helper.make_node("MatMul", [h, weight(f"{p}.up", (hidden, wide))], [f"{p}.u"], name=f"{p}/up"),
                helper.make_node("Relu", [f"{p}.u"], [f"{p}.r"], name=f"{p}/Relu"),
                helper.make_node("MatMul", [f"{p}.r", weight(f"{p}.down", (wide, hidden))], [f"{p}.o"],
                                 name=f"{p}/down"),
                helper.make_node("Add", [x, f"{p}.o"], [f"{p}.res"], name=f"{p}/residual")])
            return f"{p}.res"

        nodes.append(helper.make_node("Gather", [weight("wte", (vocab, hidden)), "input_ids"], ["h0"], name="wte"))
        x = "h0"
        for i in range(layers):
            x = block(x, f"h.{i}.attn", 3 * hidden)
            x = block(x, f"h.{i}.mlp", 4 * hidden)
        x = layer_norm(x, "ln_f", one_pass=True)  # the layer fix must rewrite
        size = f.tell()
    consts = [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
              helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-5])]
    graph = helper.make_graph(
        nodes, "decoder", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, seq, hidden])], consts + inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="pytorch")
    model.ir_version = 8
    onnx.save(model, str(path))  # the tensors already name their bytes in the data file
    if inline:
        onnx.save(onnx.load(str(path)), str(path))  # reads the data file in, writes one file
        data.unlink()
    return size
