"""Build the foreign half of the intake corpus: small models with norms written by Keras 3 and tf.keras
(through tf2onnx) and by flax.nnx (through jax2onnx), each checked to run on ONNX Runtime CPU, with the
norms each file must contain in OUT_DIR/manifest.json (format: ground_truth.py).

Runs in its own venv (TensorFlow, JAX and the converters conflict with the project's pins):

    python3 -m venv .intake-venv
    .intake-venv/bin/pip install -r tests/intake/requirements-foreign.txt
    .intake-venv/bin/pip install --no-deps tf_keras==2.21.0
    .intake-venv/bin/python tests/intake/build_foreign.py OUT_DIR

(.ci/run does exactly this, then runs the tests with NORMONNX_INTAKE_FOREIGN=OUT_DIR.)

Deterministic (every weight drawn from a seeded numpy RNG, norm parameters and running statistics
moved away from their init values so a wrongly read parameter shows), no network. Each producer runs in
a child process of this script: tf.keras needs TF_USE_LEGACY_KERAS=1 set before TensorFlow is imported,
and Keras 3 needs it unset.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

try:
    from . import ground_truth as gt  # imported as tests/intake (a pytest fixture)
except ImportError:
    import ground_truth as gt  # run as a script

SEED = 0
PRODUCERS = ("keras3-tf2onnx", "tfkeras-tf2onnx", "flax-jax2onnx")


def rng_for(name: str) -> np.random.Generator:
    """A generator per model name, so adding a model never changes another's weights."""
    return np.random.default_rng([SEED, zlib.crc32(name.encode())])


# == Keras (3 and 2) through tf2onnx ===================================================================
def keras_models(keras):
    """name -> (build(), probe shape, {layer name: how to read it as a norm}). Shapes have distinct dims
    so a transposed copy of an activation is told apart by shape and values."""
    L = keras.layers

    def seq(shape, *layers):
        inp = keras.Input(shape[1:], batch_size=None)
        y = inp
        for layer in layers:
            y = layer(y)
        return keras.Model(inp, y)

    def bn_after_add(shape, name):
        inp = keras.Input(shape[1:])
        h = L.Conv2D(shape[-1], 3, padding="same")(inp)
        y = L.BatchNormalization(epsilon=1e-3, name=name)(L.Add()([inp, h]))
        return keras.Model(inp, L.ReLU()(y))

    ln3, img = (2, 5, 16), (2, 6, 5, 8)
    models = {
        "ln": (lambda: seq(ln3, L.Dense(16), L.LayerNormalization(name="norm"), L.Dense(8)), ln3),
        "ln-eps1e-5-noscale-nocenter": (lambda: seq(ln3, L.Dense(16), L.LayerNormalization(
            epsilon=1e-5, center=False, scale=False, name="norm"), L.Dense(8)), ln3),
        "ln-eps1e-6-nocenter": (lambda: seq(ln3, L.Dense(16), L.LayerNormalization(
            epsilon=1e-6, center=False, name="norm"), L.Dense(8)), ln3),
        "ln-multiaxis": (lambda: seq(ln3, L.Dense(16), L.LayerNormalization(axis=[1, 2], epsilon=1e-5, name="norm"),
                                     L.Dense(8)), ln3),
        "gn": (lambda: seq(img, L.Conv2D(8, 3, padding="same"), L.GroupNormalization(groups=4, name="norm"),
                           L.ReLU()), img),
        "gn-g2-eps1e-5": (lambda: seq(img, L.Conv2D(8, 3, padding="same"), L.GroupNormalization(
            groups=2, epsilon=1e-5, name="norm"), L.ReLU()), img),
        "bn-input": (lambda: seq(img, L.BatchNormalization(epsilon=1e-3, name="norm"), L.Conv2D(8, 3, padding="same"),
                                 L.ReLU()), img),
        "bn-after-add": (lambda: bn_after_add(img, "norm"), img),
    }
    if hasattr(L, "RMSNormalization"):  # Keras 3 only
        models["rms"] = (lambda: seq(ln3, L.Dense(16), L.RMSNormalization(epsilon=1e-6, name="norm"), L.Dense(8)),
                         ln3)
        models["ln-rms-scaling"] = (lambda: seq(ln3, L.Dense(16), L.LayerNormalization(
            rms_scaling=True, epsilon=1e-5, name="norm"), L.Dense(8)), ln3)
    return models


def randomize_keras(model, rng: np.random.Generator) -> None:
    """Every weight from `rng`: kernels ~ N(0, 1/fan_in), biases small, norm gammas/betas/statistics
    off their init values."""
    for layer in model.layers:
        new = []
        for w in layer.weights:
            name, shape = w.path if hasattr(w, "path") else w.name, tuple(w.shape)
            leaf = name.split("/")[-1].split(":")[0]
            if leaf in ("gamma", "scale"):
                new.append(rng.uniform(0.5, 1.5, shape))
            elif leaf == "beta":
                new.append(rng.normal(0, 0.5, shape))
            elif leaf == "moving_mean":
                new.append(rng.normal(0, 1, shape))
            elif leaf == "moving_variance":
                new.append(rng.uniform(0.5, 1.5, shape))
            elif leaf == "kernel":
                new.append(rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape))
            else:
                new.append(rng.normal(0, 0.1, shape))
        if new:
            layer.set_weights([a.astype(np.float32) for a in new])


def keras_norm(keras, model, x: np.ndarray):
    """The model's layer "norm" as a ground_truth.Norm (or, for Keras' folded/odd forms, a record for
    `folded`/`other`), with its input and output on `x`."""
    layer = model.get_layer("norm")
    probe = keras.Model(model.inputs, [layer.input, layer.output])
    xin, y = (np.asarray(a, np.float64) for a in probe([x]))
    cfg = layer.get_config()
    kind = type(layer).__name__
    w = {v.path.split("/")[-1] if hasattr(v, "path") else v.name.split("/")[-1].split(":")[0]: np.asarray(v)
         for v in layer.weights}
    eps = float(cfg["epsilon"])
    nd = xin.ndim
    if kind == "LayerNormalization":
        axes = cfg["axis"] if isinstance(cfg["axis"], list) else [cfg["axis"]]
        if cfg.get("rms_scaling"):
            return "other", {"what": "Keras LayerNormalization(rms_scaling=True): x * rsqrt(var(x) + eps) * gamma "
                                     "(deprecated: scales by the variance, not centred; none of the five kinds)",
                             "eps": eps, "axes": [a % nd for a in axes]}
        return "norm", gt.Norm("ln", eps, tuple(axes), w.get("gamma"), w.get("beta"), x=xin, y=y)
    if kind == "RMSNormalization":
        axes = cfg["axis"] if isinstance(cfg["axis"], list) else [cfg["axis"]]
        return "norm", gt.Norm("rms", eps, tuple(axes), w.get("scale"), None, x=xin, y=y)
    if kind == "GroupNormalization":
        # channels-last: (N, H, W, C) -> (N, H, W, G, C/G), statistics over H, W and C/G of each group
        return "norm", gt.Norm("gn", eps, tuple(range(1, nd)), w.get("gamma"), w.get("beta"), groups=cfg["groups"],
                               channel_axis=nd - 1, layout="NHWC", x=xin, y=y)
    if kind == "BatchNormalization":
        return "norm", gt.Norm("bn", eps, tuple(range(nd - 1)), w.get("gamma"), w.get("beta"), channel_axis=nd - 1,
                               mean=w["moving_mean"], var=w["moving_variance"], layout="NHWC", x=xin, y=y)
    raise ValueError(kind)


def build_keras(out: Path, manifest: gt.Manifest, legacy: bool) -> None:
    import tensorflow as tf
    import tf2onnx

    keras = tf.keras if legacy else __import__("keras")
    from importlib.metadata import version as dist_version
    keras_version = dist_version("tf_keras" if legacy else "keras")
    producer = "tfkeras-tf2onnx" if legacy else "keras3-tf2onnx"
    opsets = (13, 17) if legacy else (13, 17, 18)
    warnings.filterwarnings("ignore", message=".*rms_scaling.*")  # the case is built on purpose
    for name, (make, shape) in keras_models(keras).items():
        rng = rng_for(f"{producer}/{name}")
        tf.random.set_seed(SEED)
        model = make()
        randomize_keras(model, rng)
        x = rng.normal(0, 1, shape).astype(np.float32)
        what, norm = keras_norm(keras, model, x)
        cls = name.split("-")[0]
        for opset in opsets:
            for optimizer in (True, False):
                # one dynamic-batch file per model (what Keras models usually carry), at the middle opset
                dynamic = opset == 17 and optimizer
                spec = (tf.TensorSpec((None if dynamic else shape[0], *shape[1:]), tf.float32, name="x"),)
                kw = {} if optimizer else {"optimizers": {}}
                fname = (f"{producer}-{name}-op{opset}-{'opt' if optimizer else 'noopt'}"
                         + ("-dynbatch" if dynamic else ""))
                try:
                    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, **kw)
                except Exception as e:  # noqa: BLE001 - a converter refusal is a finding, not a crash
                    manifest.dropped.append({"file": fname + ".onnx", "producer": producer,
                                             "why": f"tf2onnx: {gt.first_line(e)}"})
                    print(f"  DROPPED {fname}: {gt.first_line(e)}")
                    continue
                folded, other, norms, notes = [], [], [], ""
                if what == "other":
                    other = [norm]
                elif norm.kind == "bn" and not legacy:
                    # Keras 3's BatchNormalization is tf.nn.batch_normalization: frozen into x*a + b
                    folded = [{**{k: v for k, v in norm.record().items() if k in ("kind", "eps", "channel_axis")},
                               "why": "Keras 3 inference BatchNormalization is converted to a constant Mul and Add "
                                      "(x * a + b): no statistics are left in the graph"}]
                else:
                    norms = [norm]
                if legacy and name == "ln":
                    notes = "tf.keras LayerNorm with eps >= 1.001e-5 goes through FusedBatchNormV3 on a reshaped tensor"
                manifest.add(out, fname, proto, producer=producer, cls=cls,
                             options={"optimizer": optimizer, "dynamic_batch": dynamic, "keras": keras_version,
                                      "tf2onnx": tf2onnx.__version__},
                             feeds={"x": x}, norms=norms, folded=folded, other=other, notes=notes)


# == flax.nnx through jax2onnx =========================================================================
def build_flax(out: Path, manifest: gt.Manifest) -> None:
    import jax
    import jax2onnx
    from flax import nnx

    class Block(nnx.Module):
        """pre -> norm -> post, with the norm's input reachable for the ground truth."""

        def __init__(self, pre, norm, post):
            self.pre, self.norm, self.post = pre, norm, post

        def __call__(self, x):
            return self.post(self.norm(self.pre(x)))

    def dense_block(norm, rngs):
        return Block(nnx.Linear(16, 16, rngs=rngs), norm, nnx.Linear(16, 8, rngs=rngs))

    def conv_block(norm, rngs):
        return Block(nnx.Conv(4, 8, (3, 3), rngs=rngs), norm, nnx.relu)

    ln3, img = (2, 5, 16), (2, 6, 5, 4)  # img is NHWC with 4 input channels; the norm sees (2, 6, 5, 8)
    models = {
        "ln": (lambda r: dense_block(nnx.LayerNorm(16, rngs=r), r), ln3),
        "ln-twopass-eps1e-5": (lambda r: dense_block(nnx.LayerNorm(16, epsilon=1e-5, use_fast_variance=False, rngs=r),
                                                     r), ln3),
        "ln-nobias": (lambda r: dense_block(nnx.LayerNorm(16, use_bias=False, epsilon=1e-5, rngs=r), r), ln3),
        "ln-multiaxis": (lambda r: Block(nnx.Linear(16, 16, rngs=r), nnx.LayerNorm(
            16, reduction_axes=(-2, -1), feature_axes=-1, rngs=r), nnx.Linear(16, 8, rngs=r)), ln3),
        "rms": (lambda r: dense_block(nnx.RMSNorm(16, rngs=r), r), ln3),
        "rms-eps1e-5": (lambda r: dense_block(nnx.RMSNorm(16, epsilon=1e-5, rngs=r), r), ln3),
        "gn": (lambda r: conv_block(nnx.GroupNorm(8, num_groups=4, rngs=r), r), img),
        "gn-twopass-g2": (lambda r: conv_block(nnx.GroupNorm(8, num_groups=2, epsilon=1e-5, use_fast_variance=False,
                                                             rngs=r), r), img),
        "bn": (lambda r: conv_block(nnx.BatchNorm(8, use_running_average=True, rngs=r), r), img),
    }
    version = getattr(jax2onnx, "__version__", None)
    if version is None:
        from importlib.metadata import version as _v
        version = _v("jax2onnx")
    for name, (make, shape) in models.items():
        rng = rng_for(f"flax/{name}")
        block = make(nnx.Rngs(SEED))
        randomize_flax(block, rng, nnx)
        x = rng.normal(0, 1, shape).astype(np.float32)
        norm = flax_norm(block, x, nnx)
        for opset in (18, 23):
            for mode in ("auto", "prefer_native", "force_decomposed"):
                dynamic = opset == 23 and mode == "auto" and name == "ln"
                spec = [("B", *shape[1:])] if dynamic else [shape]
                fname = f"flax-jax2onnx-{name}-op{opset}-{mode.replace('_', '-')}" + ("-dynbatch" if dynamic else "")
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        proto = jax2onnx.to_onnx(block, spec, opset=opset, normalization_mode=mode)
                except Exception as e:  # noqa: BLE001
                    manifest.dropped.append({"file": fname + ".onnx", "producer": "flax-jax2onnx",
                                             "why": f"jax2onnx: {gt.first_line(e)}"})
                    print(f"  DROPPED {fname}: {gt.first_line(e)}")
                    continue
                manifest.add(out, fname, proto, producer="flax-jax2onnx", cls=name.split("-")[0],
                             options={"normalization_mode": mode, "dynamic_batch": dynamic, "jax2onnx": version,
                                      "jax": jax.__version__},
                             feeds={_input_name(proto): x}, norms=[norm])


def randomize_flax(block, rng: np.random.Generator, nnx) -> None:
    """Kernels ~ N(0, 1/fan_in); the norm's scale/bias and running statistics off their init values."""
    import jax.numpy as jnp

    for path, var in nnx.iter_graph(block):
        if not isinstance(var, nnx.Variable):
            continue
        shape, leaf = tuple(var.get_value().shape), str(path[-1])
        if leaf == "scale":
            new = rng.uniform(0.5, 1.5, shape)
        elif leaf == "bias" and "norm" in map(str, path):
            new = rng.normal(0, 0.5, shape)
        elif leaf == "mean":
            new = rng.normal(0, 1, shape)
        elif leaf == "var":
            new = rng.uniform(0.5, 1.5, shape)
        elif leaf == "kernel":
            new = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            new = rng.normal(0, 0.1, shape)
        var.set_value(jnp.asarray(new, jnp.float32))


def flax_norm(block, x: np.ndarray, nnx) -> gt.Norm:
    n = block.norm
    xin = np.asarray(block.pre(x), np.float64)
    y = np.asarray(n(block.pre(x)), np.float64)
    nd = xin.ndim

    def val(attr):
        v = getattr(n, attr, None)
        return None if v is None else np.asarray(v.get_value())

    if isinstance(n, nnx.LayerNorm):
        return gt.Norm("ln", n.epsilon, _axes(n.reduction_axes, nd), val("scale"), val("bias"), x=xin, y=y)
    if isinstance(n, nnx.RMSNorm):
        return gt.Norm("rms", n.epsilon, _axes(n.reduction_axes, nd), val("scale"), None, x=xin, y=y)
    if isinstance(n, nnx.GroupNorm):
        return gt.Norm("gn", n.epsilon, tuple(range(1, nd)), val("scale"), val("bias"), groups=n.num_groups,
                       channel_axis=nd - 1, layout="NHWC", x=xin, y=y)
    if isinstance(n, nnx.BatchNorm):
        return gt.Norm("bn", n.epsilon, tuple(range(nd - 1)), val("scale"), val("bias"), channel_axis=nd - 1,
                       mean=val("mean"), var=val("var"), layout="NHWC", x=xin, y=y)
    raise ValueError(type(n).__name__)


def _axes(axes, nd: int) -> tuple[int, ...]:
    return tuple(a % nd for a in (axes if isinstance(axes, (tuple, list)) else (axes,)))


def _input_name(proto) -> str:
    inits = {t.name for t in proto.graph.initializer}
    return next(i.name for i in proto.graph.input if i.name not in inits)


# == driver ============================================================================================
def build_one(producer: str, out: Path) -> gt.Manifest:
    manifest = gt.Manifest("build_foreign.py", SEED)
    if producer == "flax-jax2onnx":
        build_flax(out, manifest)
    else:
        build_keras(out, manifest, legacy=producer == "tfkeras-tf2onnx")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--only", choices=PRODUCERS, help="build one producer in this process (the parent runs each so)")
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.only:
        m = build_one(args.only, args.out_dir)
        part = args.out_dir / f".part-{args.only}.json"
        part.write_text(json.dumps({"files": m.files, "dropped": m.dropped, "duplicates": m.duplicates}))
        return 0
    merged = gt.Manifest("build_foreign.py", SEED)
    for producer in PRODUCERS:
        t0 = time.time()
        print(f"{producer}:", flush=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
               "PYTHONHASHSEED": "0", "TF_DETERMINISTIC_OPS": "1"}
        env.pop("TF_USE_LEGACY_KERAS", None)
        if producer == "tfkeras-tf2onnx":
            env["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras is tf_keras only when set before TF is imported
        rc = subprocess.call([sys.executable, __file__, str(args.out_dir), "--only", producer], env=env)
        part = args.out_dir / f".part-{producer}.json"
        if rc != 0 or not part.exists():
            merged.dropped.append({"file": "*", "producer": producer, "why": f"the builder exited {rc}"})
            print(f"  {producer}: builder failed (exit {rc})", flush=True)
            continue
        doc = json.loads(part.read_text())
        part.unlink()
        merged.files += doc["files"]
        merged.dropped += doc["dropped"]
        merged.duplicates += doc["duplicates"]
        print(f"  {producer}: {len(doc['files'])} files, {len(doc['dropped'])} dropped, "
              f"{len(doc['duplicates'])} duplicates ({time.time() - t0:.0f} s)", flush=True)
    path = merged.write(args.out_dir)
    print(f"wrote {path}: {len(merged.files)} files, {sum(len(f['expected']) for f in merged.files)} expected norms, "
          f"{len(merged.dropped)} dropped")
    return 1 if any(d["file"] == "*" for d in merged.dropped) else 0


if __name__ == "__main__":
    sys.exit(main())
