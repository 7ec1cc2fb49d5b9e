"""Sub-layer capture on the real SmolLM2: exact points, early exit, batch invariance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from freeret.backbone.capture import attn_point_module, capture, run_until_captured
from freeret.embed.layers import LayerSpec

TEXTS = ["dog", "a domestic animal that barks and is kept as a pet", "the act of running quickly",
         "ship", "a tall perennial woody plant having a main trunk", "x", "a unit of length equal to 12 inches", "music"]


def _inputs(bb, texts):
    return bb.inputs([bb.render(t) for t in texts])


def test_attn_point_is_layer_input_plus_attention_output(smollm):
    inp = _inputs(smollm, TEXTS[:3])
    last = smollm.layers[-1]
    seen = {}
    h1 = last.register_forward_pre_hook(lambda m, a, k: seen.__setitem__("x", (a[0] if a else k["hidden_states"]).clone()),
                                        with_kwargs=True)
    h2 = last.self_attn.register_forward_hook(lambda m, a, o: seen.__setitem__("attn", o[0].clone()))
    try:
        got = smollm.hidden_states(inp, [LayerSpec("attn", -1)])[LayerSpec("attn", -1)]
    finally:
        h1.remove(), h2.remove()
    assert torch.equal(got, seen["x"] + seen["attn"])


def test_early_exit_equals_full_forward(smollm):
    inp = _inputs(smollm, TEXTS[:4])
    specs = [LayerSpec("attn", -1), LayerSpec("mlp", -1), LayerSpec("mlp", -2), LayerSpec("final_norm")]
    full = smollm.hidden_states(inp, specs, stop=False)
    for spec in specs:
        early = smollm.hidden_states(inp, [spec])[spec]
        assert torch.equal(early, full[spec]), spec
    with torch.no_grad():
        hs = smollm.model(**inp, output_hidden_states=True).hidden_states
    assert torch.equal(full[LayerSpec("final_norm")], hs[-1])  # E5-V's hidden_states[-1] is after the final norm
    assert torch.equal(full[LayerSpec("mlp", -2)], hs[-2])


def test_early_exit_skips_final_mlp_norm_and_head(smollm):
    calls = []
    mods = [smollm.layers[-1].mlp, smollm.final_norm, smollm.model.lm_head]
    handles = [m.register_forward_hook(lambda m, a, o, n=n: calls.append(n)) for n, m in enumerate(mods)]
    try:
        smollm.embed(_inputs(smollm, TEXTS[:2]), LayerSpec("attn", -1))
    finally:
        for h in handles:
            h.remove()
    assert calls == []
    assert not smollm.layers[-1].post_attention_layernorm._forward_pre_hooks  # hooks disarmed after the call


def test_batch_invariance_left_padding(smollm):
    spec = LayerSpec("attn", -1)
    batched = smollm.embed(_inputs(smollm, TEXTS), spec)
    single = torch.cat([smollm.embed(_inputs(smollm, [t]), spec) for t in TEXTS])
    assert F.cosine_similarity(batched, single).min() >= 0.999


def test_gemma_style_attention_point():
    """Gemma normalises the attention output before the residual add: h^Attn = x + post_attention_layernorm(attn)."""
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = Gemma3ForCausalLM(cfg).eval()
    layer = model.model.layers[-1]
    assert attn_point_module(layer) is layer.pre_feedforward_layernorm
    seen = {}
    h1 = layer.register_forward_pre_hook(lambda m, a, k: seen.__setitem__("x", (a[0] if a else k["hidden_states"]).clone()),
                                         with_kwargs=True)
    h2 = layer.post_attention_layernorm.register_forward_hook(lambda m, a, o: seen.__setitem__("a", o.clone()))
    spec = LayerSpec("attn", -1)
    with torch.no_grad(), capture(model.model.layers, model.model.norm, [spec]) as got:
        assert run_until_captured(model, input_ids=torch.arange(10)[None]) is None
    h1.remove(), h2.remove()
    assert torch.equal(got[spec], seen["x"] + seen["a"])
