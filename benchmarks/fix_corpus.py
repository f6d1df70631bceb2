"""fix on real architectures: for each model (diffusers UNet/VAE, transformers encoders and decoders, both
exporters, ORT-optimized variants), the layers `scan --validate` fails on ORT CPU before and after
`normonnx fix`, what fix rewrote, and whether the two commands agree. Built from configs (random init,
nothing downloaded), written to a temp folder, never committed.

    python benchmarks/fix_corpus.py            # prints a table; exit 1 if fix and scan ever disagree
"""
from __future__ import annotations

import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import normonnx
from normonnx.features.scan import scan


class Wrap(torch.nn.Module):
    def __init__(self, model, *names, out="last_hidden_state"):
        super().__init__()
        self.model, self.names, self.out = model, names, out

    def forward(self, *args):
        r = self.model(**dict(zip(self.names, args, strict=False)))
        return getattr(r, self.out) if not isinstance(r, torch.Tensor) else r


class Decoder(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z).sample


def export(module, args, path: Path, opset: int, names, dynamo: bool) -> Path:
    from normonnx.exporting.exporters import quiet_export

    with quiet_export([]), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        kw = {"external_data": False} if dynamo else {}
        torch.onnx.export(module.eval(), args, str(path), opset_version=opset, dynamo=dynamo,
                          input_names=list(names), **kw)
    return path


def ort_optimized(src: Path, dst: Path, model_type: str, **kw) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimize_model(str(src), model_type=model_type, opt_level=0, **kw).save_model_to_file(str(dst))
    return dst


def corpus(folder: Path):
    """(name, path) pairs, built one by one (each export a few seconds)."""
    from diffusers import AutoencoderKL, UNet2DModel
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2Model,
        LlamaConfig,
        LlamaModel,
        ViTConfig,
        ViTModel,
    )

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([10])
    for opset, dynamo in ((17, False), (18, True), (21, True)):
        name = f"diffusers-unet-op{opset}-{'dynamo' if dynamo else 'torchscript'}"
        yield name, export(Wrap(unet, "sample", "timestep", out="sample"), (x, t), folder / f"{name}.onnx", opset,
                           ["sample", "timestep"], dynamo)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=8, sample_size=32)
    for opset, dynamo in ((17, False), (21, True)):
        name = f"diffusers-vae-decoder-op{opset}-{'dynamo' if dynamo else 'torchscript'}"

        yield name, export(Decoder(vae), (torch.randn(1, 4, 16, 16),), folder / f"{name}.onnx", opset, ["z"], dynamo)
    ids, mask = torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.int64)
    bert = BertModel(BertConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                vocab_size=100, max_position_embeddings=64))
    p = export(Wrap(bert, "input_ids", "attention_mask"), (ids, mask), folder / "bert-op14-torchscript.onnx", 14,
               ["input_ids", "attention_mask"], False)
    yield "bert-op14-torchscript", p
    yield "bert-op14-ort-optimized", ort_optimized(p, folder / "bert-opt.onnx", "bert", num_heads=4, hidden_size=64)
    gpt2 = GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64))
    p = export(Wrap(gpt2, "input_ids", "attention_mask"), (ids, mask), folder / "gpt2-op14-torchscript.onnx", 14,
               ["input_ids", "attention_mask"], False)
    yield "gpt2-op14-torchscript", p
    llama = LlamaModel(LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=100, max_position_embeddings=64))
    yield "llama-op17-torchscript", export(Wrap(llama, "input_ids", "attention_mask"), (ids, mask),
                                           folder / "llama-op17-torchscript.onnx", 17,
                                           ["input_ids", "attention_mask"], False)
    vit = ViTModel(ViTConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                             image_size=32, patch_size=8))
    yield "vit-op17-torchscript", export(Wrap(vit, "pixel_values"), (torch.randn(1, 3, 32, 32),),
                                         folder / "vit-op17-torchscript.onnx", 17, ["pixel_values"], False)


def main() -> int:
    rows, disagree = [], 0
    totals = [0, 0, 0]
    with tempfile.TemporaryDirectory(prefix="normonnx-fix-corpus-") as tmp:
        folder = Path(tmp)
        for name, path in corpus(folder):
            before = scan(path, validate=True)
            out = folder / f"{name}.fixed.onnx"
            t0 = time.perf_counter()
            rep = normonnx.fix(path, out, proof=normonnx.ProofOptions(timing=False))
            secs = time.perf_counter() - t0
            after = scan(out, validate=True) if rep.written else None
            failed_after = after.counts["failed"] if after else None
            agree = after is None or (rep.exit_code == 0) == (after.exit_code == 0)
            disagree += not agree
            totals[0] += before.counts["failed"]
            totals[1] += failed_after if failed_after is not None else before.counts["failed"]
            totals[2] += len(rep.changes)
            forms = sorted({lf.form for lf in rep.changes})
            rows.append([name, len(before.norms), before.counts["failed"], len(rep.changes), ",".join(forms) or "-",
                         "-" if failed_after is None else failed_after, int(rep.exit_code),
                         "-" if after is None else int(after.exit_code), "yes" if agree else "NO", f"{secs:.1f}"])
            print(f"  .. {name}: done", file=sys.stderr, flush=True)
    from normonnx.presentation.render import table

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; ORT CPU; torch {torch.__version__}")
    print(table(["model", "norms", "fail before", "rewritten", "forms", "fail after", "fix exit", "scan exit",
                 "agree", "fix s"], rows))
    print(f"\nfailing layers on ORT CPU: {totals[0]} before -> {totals[1]} after; {totals[2]} layers rewritten; "
          f"{disagree} disagreements between fix and scan --validate")
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
