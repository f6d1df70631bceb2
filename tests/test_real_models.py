"""scan on real architectures (transformers and diffusers definitions, tiny configs, random init, no
downloads), exported by real exporters and rewritten by ORT's own optimizers: the patterns they
write are found, checks run or say why, and the fusion column is ORT's answer for the whole model."""
from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch

from normonnx.features.scan import scan
from normonnx.repair.fixer import FixOptions, ProofOptions

transformers = pytest.importorskip("transformers", reason="the real-model corpus needs transformers (test extras)")


class Wrap(torch.nn.Module):
    """Positional inputs for the exporters; returns the model's main tensor."""

    def __init__(self, model, *names, out="last_hidden_state"):
        super().__init__()
        self.model, self.names, self.out = model, names, out

    def forward(self, *args):
        return getattr(self.model(**dict(zip(self.names, args, strict=False))), self.out)


def _export(module, args, path, opset, names, dynamic=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), opset_version=opset, dynamo=False, input_names=list(names),
                          dynamic_axes=dynamic)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    return tmp_path_factory.mktemp("real")


def _ids(n=16):
    return torch.randint(0, 100, (2, n)), torch.ones(2, n, dtype=torch.int64)


def test_llama_rmsnorm_through_torchscript_is_found_by_its_rsqrt_form(folder):
    """LlamaRMSNorm computes hidden * torch.rsqrt(var + eps): TorchScript writes Div(1, Sqrt) then Mul,
    which scan missed (every TorchScript LLaMA/Qwen/T5 export showed 0 norms)."""
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
    path = _export(Wrap(LlamaModel(cfg), "input_ids", "attention_mask"), _ids(), folder / "llama.onnx", 17,
                   ["input_ids", "attention_mask"])
    report = scan(path, validate=True, inputs=["normal", "offset"])
    assert [(f.kind, f.form) for f in report.norms] == [("rms", "decomposed")] * 5  # 2 per layer + final
    assert all("Div" in f.op for f in report.norms)
    assert report.counts == {"passed": 5, "failed": 0, "not_checked": 0, "internal_error": 0, "not_validated": 0}, report.validations


def test_convnext_fusion_is_what_ort_does_in_the_whole_model(folder):
    """ConvNeXt's LayerNorms through TorchScript at opset 14: each fuses when cut out alone, but in the
    whole model ORT's layout transforms leave two decomposed and turn two into Sub +
    SimplifiedLayerNormalization. The column reports the whole model."""
    from transformers import ConvNextConfig, ConvNextModel

    cfg = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)
    path = _export(Wrap(ConvNextModel(cfg), "pixel_values"), (torch.randn(1, 3, 32, 32),), folder / "cnx.onnx", 14,
                   ["pixel_values"])
    report = scan(path, validate=True, inputs=["normal"])
    assert [(f.kind, f.form) for f in report.norms] == [("ln", "decomposed")] * 4
    assert sorted(map(str, report.fused.values())) == ["False", "False", "partly: SimplifiedLayerNormalization",
                                                        "partly: SimplifiedLayerNormalization"]
    assert report.counts["passed"] == 4


def test_bert_after_ort_optimizer_validates_its_skip_layernorms(folder):
    """ORT's BERT optimizer writes SkipLayerNormalization with a bias input: validated with residual and
    bias at zero (was 'not validated' for every layer)."""
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import BertConfig, BertModel

    cfg = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                     vocab_size=100, max_position_embeddings=64)
    tt = torch.zeros(2, 16, dtype=torch.int64)
    src = _export(Wrap(BertModel(cfg), "input_ids", "attention_mask", "token_type_ids"), (*_ids(), tt),
                  folder / "bert.onnx", 17, ["input_ids", "attention_mask", "token_type_ids"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimize_model(str(src), model_type="bert", num_heads=4, hidden_size=32).save_model_to_file(
            str(folder / "bert-opt.onnx"))
    report = scan(folder / "bert-opt.onnx", validate=True, inputs=["normal", "offset"])
    forms = Counter(f.op for f in report.norms)
    assert forms == {"com.microsoft.SkipLayerNormalization": 4, "LayerNormalization": 1}, forms
    assert report.counts == {"passed": 5, "failed": 0, "not_checked": 0, "internal_error": 0, "not_validated": 0}, report.validations


def test_diffusers_unet_after_ort_optimizer_shows_its_group_norms(folder):
    """ORT's UNet optimizer writes com.microsoft GroupNorm and SkipGroupNorm (NHWC, SiLU fused): found
    (scan missed SkipGroupNorm), with their one-pass-variance risk, and not validated with the reason."""
    diffusers = pytest.importorskip("diffusers", reason="needs diffusers (test extras)")
    from onnxruntime.transformers.optimizer import optimize_model

    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    src = _export(Wrap(unet, "sample", "timestep", out="sample"), (torch.randn(1, 3, 8, 8), torch.tensor([10])),
                  folder / "unet.onnx", 17, ["sample", "timestep"])
    plain = scan(src)
    assert Counter((f.kind, f.form) for f in plain.norms) == {("gn", "instance-trick"): 18}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimize_model(str(src), model_type="unet", opt_level=0).save_model_to_file(str(folder / "unet-opt.onnx"))
    report = scan(folder / "unet-opt.onnx", validate=True, inputs=["normal"])
    ops = Counter(f.op for f in report.norms)
    assert ops["com.microsoft.SkipGroupNorm"] > 0 and ops["com.microsoft.GroupNorm"] > 0, ops
    contrib = [i for i, f in enumerate(report.norms) if f.form == "contrib"]
    assert all(report.norms[i].risks[0].code == "one-pass-variance" for i in contrib)
    assert all(report.validations[i].status == "not checked" and "NHWC" in report.validations[i].validation
               for i in contrib)


def test_gpt2_with_symbolic_dims_validates_instead_of_failing(folder):
    """Batch and sequence symbolic: the hidden dim the LayerNorm weights fix is 32, not a stand-in 8."""
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=100, n_positions=64)
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    path = _export(Wrap(GPT2Model(cfg), "input_ids", "attention_mask"), _ids(), folder / "gpt2.onnx", 14,
                   ["input_ids", "attention_mask"], dynamic=dyn)
    report = scan(path, validate=True, inputs=["normal", "offset"])
    assert [(f.kind, f.form) for f in report.norms] == [("ln", "decomposed")] * 3
    assert report.counts == {"passed": 3, "failed": 0, "not_checked": 0, "internal_error": 0, "not_validated": 0}, report.validations
    assert all(v.spec_id.startswith("ln-n32-") for v in report.validations.values())


def test_weight_standardised_conv_is_not_a_batchnorm_layer(folder):
    """timm's StdConv2d (BiT, NF-ResNets) normalizes its weight with F.batch_norm(training=True); the
    TorchScript exporter writes a BatchNormalization over a constant. Not an activation norm."""
    import torch.nn.functional as F

    class StdConv2d(torch.nn.Conv2d):  # as timm.layers.StdConv2d writes it (timm needs torchvision's ops)
        def forward(self, x):
            w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.,
                             eps=1e-6).reshape_as(self.weight)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    block = torch.nn.Sequential(StdConv2d(8, 8, 3, padding=1, bias=False), torch.nn.GroupNorm(4, 8), torch.nn.ReLU())
    path = _export(block, (torch.randn(2, 8, 8, 8),), folder / "stdconv.onnx", 17, ["x"])
    report = scan(path)
    assert [(f.kind, f.form) for f in report.norms] == [("gn", "instance-trick")]
    assert [(x.kind, "weight standardisation" in x.reason) for x in report.left_out] == [("bn", True)]


# -- normonnx fix on real architectures (issue 13) ---------------------------------------------------
def test_llama_fix_to_rmsnormalization_starts_after_the_shared_cast(folder):
    """LlamaRMSNorm casts the residual stream to float32 and the residual Add reads that Cast too: the
    rewrite starts after the Cast instead of refusing the layer. With --opset 23 every RMSNorm becomes
    RMSNormalization, and the whole model agrees with the original."""
    import normonnx
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, max_position_embeddings=64)
    src = _export(Wrap(LlamaModel(cfg), "input_ids", "attention_mask"), _ids(), folder / "llama-fix.onnx", 17,
                  ["input_ids", "attention_mask"])
    assert normonnx.fix(src, mode="check").exit_code == 0  # float32 chains at opset 17: nothing to gain
    report = normonnx.fix(src, folder / "llama-23.onnx", change=FixOptions(opset=23),
                          proof=ProofOptions(timing=False))
    assert [lf.status for lf in report.layers] == ["rewritten"] * 5, [lf.reason for lf in report.layers]
    assert report.whole_model.status == "pass"
    after = scan(folder / "llama-23.onnx", validate=True, inputs=["normal", "offset", "wide"])
    assert [f.op for f in after.norms] == ["RMSNormalization"] * 5 and after.verdict.status == "pass"


def test_diffusers_unet_groupnormalization_fixed(folder):
    """A diffusers UNet2DModel through dynamo at opset 21: every GroupNormalization fails offset before
    (ORT's E[x^2]-E[x]^2 body), every rewritten layer passes it after, and the whole model agrees."""
    diffusers = pytest.importorskip("diffusers", reason="needs diffusers (test extras)")
    import normonnx

    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    src = folder / "unet21.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrap(unet, "sample", "timestep", out="sample").eval(),
                          (torch.randn(1, 3, 8, 8), torch.tensor([10])), str(src), opset_version=21, dynamo=True,
                          external_data=False, verbose=False)
    report = normonnx.fix(src, folder / "unet21-fixed.onnx", proof=ProofOptions(timing=False))
    assert len(report.layers) >= 10 and all(lf.status == "rewritten" for lf in report.layers)
    for lf in report.layers:  # failed as it was; the chosen form passes against the original's own norm
        assert lf.before.status == "fail" and lf.final.status == "pass", lf.to_dict()
        assert next(c for c in lf.candidates if c.form == lf.form).status == "pass"
    assert report.whole_model.status == "pass" and report.exit_code == 0
    after = scan(folder / "unet21-fixed.onnx", validate=True)
    assert {(f.kind, f.form) for f in after.norms} == {("ln", "native")} and after.verdict.status == "pass"


def test_gpt2_float16_fix_within_float16_tolerance(folder):
    """GPT-2 in float16 through TorchScript at opset 14 with symbolic dims: the LayerNorm that computes
    in float16 is rewritten with float32 statistics (the others already see float32 after GPT-2's
    upcast); the whole model is compared at float16's tolerance, the precision the rewrite changed."""
    import normonnx
    from transformers import GPT2Config, GPT2Model

    g = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=64)).half()
    src = _export(Wrap(g, "input_ids", "attention_mask"), _ids(), folder / "gpt2-fp16.onnx", 14,
                  ["input_ids", "attention_mask"], dynamic={"input_ids": {0: "b", 1: "t"},
                                                             "attention_mask": {0: "b", 1: "t"}})
    shapes = {"input_ids": (2, 16), "attention_mask": (2, 16)}
    report = normonnx.fix(src, folder / "gpt2-fixed.onnx", change=FixOptions(input_shapes=shapes),
                          proof=ProofOptions(runtimes=["cpu", "reference"], timing=False))
    changed = [lf for lf in report.layers if lf.status == "rewritten"]
    assert changed and all(lf.norm.dtype == "float16" for lf in changed)
    assert all(lf.before.status == "fail" and "offset" in lf.before.validation and lf.final.status == "pass"
               for lf in changed), [lf.to_dict() for lf in changed]
    assert report.whole_model.status == "pass" and report.written
    import onnx

    # the symbolic batch/sequence dims stay symbolic in the output (--input-shape only drives the proof)
    a, b = onnx.load(str(src)), onnx.load(str(folder / "gpt2-fixed.onnx"))
    assert [i.type for i in a.graph.input] == [i.type for i in b.graph.input]
    assert b.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "b"
