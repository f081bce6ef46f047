"""`cai export`: a model spec as a plain safetensors directory (for vLLM and other servers)."""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    model: str = typer.Argument(
        ..., help="'embedded', a .gguf file, an HF dir or a LoRA checkpoint (merged on export)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory to write (safetensors, tokenizer, cai_export.json)."
    ),
    dtype: str = typer.Option(
        "bfloat16", help="Weights on disk: bfloat16 (vLLM on GPU), float16 or float32."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing non-empty directory."),
) -> None:
    """Save any model as an HF safetensors directory, e.g. for `vllm serve DIR` or --backend vllm."""
    from constitutional.scale.export import export_model

    record = export_model(model, out, dtype=dtype, overwrite=overwrite)
    typer.echo(
        f"exported {model} ({record['parameters'] / 1e6:.0f}M parameters, {dtype}) → {out}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.command()(export)
