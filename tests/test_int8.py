"""`--precision int8` pieces on a tiny random Llama: smoothing is exact in fp32, and the int8
Linear stays close to the fp32 one (the embedded model's quality bounds are in
test_embedded_model.py)."""

import torch
from transformers import AutoModelForCausalLM

from constitutional.backends import int8
from constitutional.backends.int8 import Int8Linear, input_absmax, quantize_linears, smooth_llama


def _model(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits


def test_smoothing_changes_nothing_in_fp32_but_tames_outlier_channels(tiny_model_dir):
    model, ids = _model(tiny_model_dir), torch.randint(0, 1000, (2, 12))
    with torch.no_grad():  # an outlier channel, like SmolLM2's, in every layer's normed input
        for layer in model.model.layers:
            layer.input_layernorm.weight[3] = 60.0
    before = _logits(model, ids)
    absmax = input_absmax(model, [{"input_ids": ids}])
    q_proj = model.model.layers[0].self_attn.q_proj
    spread_before = absmax[q_proj].max() / absmax[q_proj].median()
    smooth_llama(model, absmax)
    assert torch.allclose(_logits(model, ids), before, atol=1e-4, rtol=1e-4)
    after = input_absmax(model, [{"input_ids": ids}])[q_proj]
    assert after.max() / after.median() < spread_before / 4
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # the embedding is untouched


def test_int8_linear_is_close_to_fp32_and_keeps_each_token_apart():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    q = Int8Linear(linear)
    x = torch.randn(3, 20, 64)
    rel = (q(x) - linear(x)).norm() / linear(x).norm()
    assert rel < 0.02
    # One token with a huge activation must not change the others' results (per-token scales).
    spiked = x.clone()
    spiked[0, 0] *= 1000
    assert torch.equal(q(spiked)[1:], q(x)[1:]) and torch.equal(q(spiked)[0, 1:], q(x)[0, 1:])
    assert q(x[:1, :2]).shape == (1, 2, 48)  # fewer rows than the int8 kernel takes


def test_quantized_model_generates_close_logits(tiny_model_dir):
    model, ids = _model(tiny_model_dir), torch.randint(0, 1000, (2, 12))
    before = _logits(model, ids)
    smooth_llama(model, input_absmax(model, [{"input_ids": ids}]))
    quantize_linears(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    after = _logits(model, ids)
    assert (after - before).norm() / before.norm() < 0.05


def test_siblings_quantize_their_shared_input_once_and_compute_the_same(tiny_model_dir):
    model, ids = _model(tiny_model_dir), torch.randint(0, 1000, (3, 12))
    quantize_linears(model)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.q_proj.shared_input is attn.k_proj.shared_input is attn.v_proj.shared_input
    assert mlp.gate_proj.shared_input is mlp.up_proj.shared_input
    assert attn.o_proj.shared_input is None and mlp.down_proj.shared_input is None
    calls = []
    real = int8.quantize_rows
    int8.quantize_rows = lambda x: calls.append(x.shape) or real(x)
    try:
        shared = _logits(model, ids)
    finally:
        int8.quantize_rows = real
    # per layer: one for q/k/v, o_proj, one for gate/up, down_proj; plus lm_head
    assert len(calls) == 4 * len(model.model.layers) + 1
    assert attn.q_proj.shared_input.memo is None  # released after its last reader
    for m in model.modules():
        if isinstance(m, Int8Linear):
            m.shared_input = None
    assert torch.equal(_logits(model, ids), shared)


def test_shared_input_never_hands_one_callers_input_to_another():
    shared, a, b = int8.SharedInput(2), torch.randn(20, 8), torch.randn(20, 8)
    shared(a)  # a's first reader
    from_b = shared(b)  # another caller's input comes between a's two readers
    from_a = shared(a)
    assert torch.equal(from_a[0], int8.quantize_rows(a)[0]) and torch.equal(
        from_b[0], int8.quantize_rows(b)[0]
    )


def calibration_conversations_from_sources() -> list[list[dict]]:
    """The calibration set as the package builds its inputs: chat prompts past the 20th of two
    builtin sets, and four few-shot critique requests from the default constitution. The
    backend reads a frozen copy (backends may not import the SL-CAI stage); this rebuilds it."""
    from constitutional.constitution import load_constitution
    from constitutional.generate import load_prompts
    from constitutional.sl_cai.prompts import critique_messages, fewshot_messages

    prompts = [
        r["prompt"]
        for s in ("self_instruct", "advbench")
        for r in load_prompts(f"builtin:{s}")[20:36]
    ]
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    constitution = load_constitution()
    fewshot = fewshot_messages(constitution, 2)
    pairs = constitution.critique_revision
    conversations += [
        critique_messages(fewshot, prompts[i], "Here is an answer.", pairs[i % len(pairs)])
        for i in range(4)
    ]
    return conversations


def test_frozen_calibration_set_matches_its_sources():
    """If the prompts, the constitution or the critique layout change, regenerate the file with
    `PYTHONPATH=src python tests/test_int8.py` (int8 scales, and so int8 outputs, change too)."""
    assert int8.calibration_conversations() == calibration_conversations_from_sources()


if __name__ == "__main__":
    from constitutional.jsonl import write_jsonl

    write_jsonl(
        int8.CALIBRATION_FILE, ({"messages": m} for m in calibration_conversations_from_sources())
    )
