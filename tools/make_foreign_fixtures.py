#!/usr/bin/env python3
"""Writes the foreign Mamba checkpoints of tests/data/foreign/ (issue 18).

Each fixture is a folder `tests/data/foreign/<name>/` holding
`model/` (the checkpoint directory, exactly as the foreign library writes it)
and `expected.safetensors` (`input.input_ids` (B, L) int64 and
`output.logits` (B, L, V) float32, computed by a pure-PyTorch forward).

Fixtures:
- `hf_tied`, `hf_untied_bias`: Hugging Face `transformers`
  `MambaForCausalLM.save_pretrained` (config.json + model.safetensors). The
  reference is the same model's forward (its pure-PyTorch path).
- `ssm_rms`: a `mamba_ssm` `MambaLMHeadModel.save_pretrained` directory
  (config.json of its `MambaConfig` + `torch.save(state_dict)` to
  pytorch_model.bin). Reference: a Hugging Face `MambaForCausalLM` holding the
  very same weights (vocabulary = the padded one), cross-checked against
  mamba_ssm's own forward.
- `ssm_ln_mlp`: a `mamba_ssm` model with LayerNorm, a gated MLP, no tying,
  biases and a fixed `dt_rank`, which Hugging Face cannot represent. Reference:
  mamba_ssm's own forward with its pure-PyTorch parts (`selective_scan_ref`,
  `nn.Conv1d`, the unfused add + norm).

mamba_ssm cannot be built without CUDA, so it is imported from its unpacked
source distribution (`--mamba-ssm-src`, the folder holding `mamba_ssm/`) with
a stub for its CUDA extension `selective_scan_cuda`; only pure-PyTorch code
of it runs.

Usage: python tools/make_foreign_fixtures.py --mamba-ssm-src DIR [--out tests/data/foreign]
Needs: torch, transformers, safetensors, einops, triton (imported by mamba_ssm).
"""

import argparse
import json
import os
import sys
import types

import torch
from safetensors.torch import save_file


def perturb(model, seed):
    """Adds noise to every parameter, so that no weight keeps a default
    (norm weights 1, biases 0, D = 1) that a wrong mapping could hide behind."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def ids_for(vocab, seed, batch=2, seqlen=7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seqlen), generator=g)
    ids[0, 0] = vocab - 1  # the highest id exercises the last embedding row
    return ids


def write_expected(folder, ids, logits):
    save_file(
        {"input.input_ids": ids.contiguous(), "output.logits": logits.float().contiguous()},
        os.path.join(folder, "expected.safetensors"),
    )
    for root, _, files in os.walk(folder):
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def hf_model(vocab, hidden, state, layers, seed, **kw):
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(seed)
    cfg = MambaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        state_size=state,
        num_hidden_layers=layers,
        use_mambapy=False,
        **kw,
    )
    model = MambaForCausalLM(cfg).eval()
    perturb(model, seed + 1)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def make_hf(out, name, seed, **kw):
    model = hf_model(seed=seed, **kw)
    folder = os.path.join(out, name)
    model.save_pretrained(os.path.join(folder, "model"))
    ids = ids_for(kw["vocab"], seed + 2)
    write_expected(folder, ids, hf_logits(model, ids))


def import_mamba_ssm(src):
    sys.path.insert(0, src)
    # The CUDA extension is never called: the forward below runs the
    # pure-PyTorch reference scan.
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    import mamba_ssm.modules.mamba_simple as simple
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    from mamba_ssm.ops.triton import layer_norm as ln

    simple.selective_scan_fn = selective_scan_ref
    assert simple.causal_conv1d_fn is None, "uninstall causal_conv1d: the fixture needs nn.Conv1d"

    def rms_forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        assert residual is None and not prenorm
        return ln.rms_norm_ref(x, self.weight, self.bias, eps=self.eps, upcast=True).to(x.dtype)

    ln.RMSNorm.forward = rms_forward
    import mamba_ssm

    return mamba_ssm


def ssm_model(mamba_ssm, cfg, seed):
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    torch.manual_seed(seed)
    model = MambaLMHeadModel(MambaConfig(**cfg)).eval()
    for block in model.backbone.layers:
        block.mixer.use_fast_path = False
    perturb(model, seed + 1)
    return model


def ssm_logits(model, ids):
    """mamba_ssm's own forward, with add + norm unfused (the same math as its
    fused Triton kernel, which needs a GPU)."""
    model.backbone.fused_add_norm = False
    for block in model.backbone.layers:
        block.fused_add_norm = False
    with torch.no_grad():
        return model(ids).logits


def hf_twin(model):
    """A Hugging Face MambaForCausalLM holding `model`'s weights."""
    from transformers import MambaConfig, MambaForCausalLM

    ssm = model.config.ssm_cfg
    vocab = model.lm_head.weight.shape[0]
    hf_cfg = MambaConfig(
        vocab_size=vocab,
        hidden_size=model.config.d_model,
        state_size=ssm.get("d_state", 16),
        num_hidden_layers=model.config.n_layer,
        expand=ssm.get("expand", 2),
        conv_kernel=ssm.get("d_conv", 4),
        use_bias=ssm.get("bias", False),
        use_conv_bias=ssm.get("conv_bias", True),
        time_step_rank=ssm.get("dt_rank", "auto"),
        residual_in_fp32=model.config.residual_in_fp32,
        tie_word_embeddings=model.config.tie_embeddings,
        layer_norm_epsilon=1e-5,
        use_mambapy=False,
    )
    hf = MambaForCausalLM(hf_cfg).eval()
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and not [m for m in missing if m != "lm_head.weight"], (missing, unexpected)
    if hf_cfg.tie_word_embeddings:
        hf.tie_weights()
    return hf


def make_ssm(out, name, mamba_ssm, cfg, seed, hf_reference):
    model = ssm_model(mamba_ssm, cfg, seed)
    folder = os.path.join(out, name)
    model.save_pretrained(os.path.join(folder, "model"))
    vocab = cfg["vocab_size"]  # ids within the real vocabulary
    ids = ids_for(vocab, seed + 2)
    own = ssm_logits(model, ids)
    if hf_reference:
        ref = hf_logits(hf_twin(model), ids)
        err = ((ref - own).abs().max() / ref.abs().max()).item()
        assert err < 1e-5, f"{name}: mamba_ssm and transformers disagree by {err}"
        print(f"{name}: mamba_ssm vs transformers max rel diff {err:.2e}")
    else:
        ref = own
    write_expected(folder, ids, ref)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/foreign")
    ap.add_argument("--mamba-ssm-src", required=True)
    args = ap.parse_args()
    torch.set_default_dtype(torch.float32)
    os.makedirs(args.out, exist_ok=True)
    make_hf(args.out, "hf_tied", 10, vocab=100, hidden=24, state=8, layers=2)
    make_hf(
        args.out,
        "hf_untied_bias",
        20,
        vocab=97,
        hidden=16,
        state=10,
        layers=2,
        tie_word_embeddings=False,
        use_bias=True,
        use_conv_bias=False,
        conv_kernel=3,
        expand=3,
        time_step_rank=5,
        layer_norm_epsilon=1e-6,
        residual_in_fp32=False,
    )
    mamba_ssm = import_mamba_ssm(args.mamba_ssm_src)
    make_ssm(
        args.out,
        "ssm_rms",
        mamba_ssm,
        dict(d_model=32, n_layer=2, vocab_size=100, ssm_cfg={"d_state": 16, "layer": "Mamba1"}),
        30,
        hf_reference=True,
    )
    make_ssm(
        args.out,
        "ssm_ln_mlp",
        mamba_ssm,
        dict(
            d_model=16,
            n_layer=2,
            d_intermediate=40,
            vocab_size=90,
            rms_norm=False,
            residual_in_fp32=False,
            tie_embeddings=False,
            ssm_cfg={"d_state": 8, "d_conv": 2, "expand": 1.5, "dt_rank": 3, "conv_bias": False, "bias": True},
        ),
        40,
        hf_reference=False,
    )
    import transformers

    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                      "mamba_ssm": mamba_ssm.__version__}))


if __name__ == "__main__":
    main()
