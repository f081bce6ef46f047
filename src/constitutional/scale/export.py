"""`cai export`: any model spec as a plain HF safetensors directory that vLLM can serve.

vLLM on CPU reads no GGUF, and a LoRA checkpoint from `cai sl-cai train` names its base by our
own spec ("embedded"). Loading the spec exactly as the local backend does (GGUF dequantised, the
GGUF marker dropped, an adapter merged into its base) and saving the result gives one ordinary
directory for vLLM, llama.cpp's converter, or any HF tool.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from constitutional.atomic_dir import refuse_existing, staged_dir
from constitutional.errors import UserError

DTYPES = ("bfloat16", "float16", "float32")


def export_model(
    spec: str, out: str | Path, *, dtype: str = "bfloat16", overwrite: bool = False
) -> dict[str, Any]:
    """Write `spec` (embedded, a .gguf, an HF dir or a LoRA checkpoint) to `out` as safetensors.

    Args:
        spec: a model spec as `--model` takes it.
        out: directory to create; written beside itself and moved into place when complete.
        dtype: weights' dtype on disk; bfloat16 is what vLLM runs on GPU.
        overwrite: replace a non-empty `out`.

    Returns:
        What `cai_export.json` in `out` records: source, source fingerprint, dtype, parameters.

    Raises:
        UserError: unknown dtype or model, or `out` in the way.
    """
    out = Path(out)
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    refuse_existing(out, overwrite)
    import torch

    from constitutional.backends.local import fingerprint_dir, load_model, resolve_model
    from constitutional.jsonl import write_json

    model, tokenizer = load_model(spec, "cpu")  # adapters come back merged into their base
    # A copy: `load_model` shares one model per process, and `.to` converts a module in place.
    model = copy.deepcopy(model).to(getattr(torch, dtype))
    if getattr(model.config, "quantization_config", None) is not None:  # a GGUF marker left over
        del model.config.quantization_config
        model.hf_quantizer = None
    record = {
        "source": spec,
        "source_fingerprint": fingerprint_dir(resolve_model(spec)),
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    with staged_dir(out, overwrite) as tmp:
        model.save_pretrained(tmp)  # safetensors; tied embeddings stay tied
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "cai_export.json", record)
    return record
