"""The `vllm` backend: vLLM's offline engine in this process, for batch inference on a GPU.

One `LLM.generate` call takes every request of a stage at once and vLLM schedules them itself
(continuous batching, prefix caching: the shared few-shot turns are prefilled once). Each
request keeps its own seed through `SamplingParams(seed=...)`. Chat messages are rendered with
the model's chat template here, as the local backend does, so both see the same text.

PyPI's vllm runs on CUDA only, and vLLM does not read our GGUF: turn any model spec into a plain
safetensors directory first with `cai export MODEL --out DIR`, then `--model DIR`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from constitutional.backends.base import (
    Completion,
    GenerationRequest,
    OnResult,
    Prompt,
    TokenLogprob,
)
from constitutional.errors import UserError


def import_vllm():
    """Import vllm, or explain in one line why this machine cannot run it."""
    try:
        import vllm
    except ImportError:
        raise UserError(
            "the vllm backend needs vLLM and a CUDA GPU: pip install 'constitutional[gpu]' "
            "(or use --backend local, or --backend openai against a vLLM server)"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "the vllm backend needs a CUDA GPU and none is visible; use --backend local"
        )
    return vllm


class VLLMBackend:
    """A model served by vLLM's offline `LLM` engine in this process.

    Args:
        model: an HF model directory (see `cai export`) or a hub id already in the local HF cache.
        gpu_memory_utilization: share of GPU memory vLLM may take for weights and KV cache.
        tensor_parallel_size: GPUs to shard one model over.
        max_model_len: context length to reserve KV cache for (None: the model's own).
        dtype: "auto" (the checkpoint's), "bfloat16", "float16".
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        dtype: str = "auto",
    ):
        vllm = import_vllm()
        if model == "embedded" or model.endswith(".gguf"):
            raise UserError(
                f"vLLM cannot load {model!r}: run `cai export {model} --out DIR` and use --model DIR"
            )
        self.model = model
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def fingerprint(self) -> str:
        path = Path(self.model)
        if path.is_dir():
            from constitutional.backends.local import fingerprint_dir

            return f"vllm:{self.model}:{fingerprint_dir(path)}"
        return f"vllm:{self.model}"

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )

    def generate(
        self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None
    ) -> list[Completion]:
        """Hand every request to the engine at once; it batches and schedules them."""
        if not requests:
            return []
        params = [
            self._vllm.SamplingParams(
                temperature=r.temperature,
                top_p=r.top_p,
                max_tokens=r.max_tokens,
                seed=r.seed,
                min_tokens=r.min_tokens,
                stop=list(r.stop) or None,
                logprobs=r.logprobs,
            )
            for r in requests
        ]
        prompts = [self.render(r.messages or r.prompt) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for i, out in enumerate(outputs):  # vLLM returns outputs in input order
            results.append(self._completion(out))
            if on_result:
                on_result(i, results[-1])
        return results

    def _completion(self, out) -> Completion:
        best = out.outputs[0]
        logprobs = None
        if best.logprobs is not None:
            logprobs = [
                TokenLogprob(
                    step[token].decoded_token or "",
                    step[token].logprob,
                    {lp.decoded_token or "": lp.logprob for lp in step.values()},
                )
                for token, step in zip(best.token_ids, best.logprobs)
            ]
        finish = "length" if best.finish_reason == "length" else "stop"
        return Completion(
            best.text, finish, len(out.prompt_token_ids), len(best.token_ids), logprobs
        )

    def choice_logprobs(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[list[float]]:
        return self.choice_logprobs_with_usage(prompts, choices)[0]

    def choice_logprobs_with_usage(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> tuple[list[list[float]], list[int]]:
        """Exact log p(choice | prompt): score prompt + choice with `prompt_logprobs` and sum the
        choice's tokens. Prefix caching makes the repeated prompt nearly free, so each prompt is
        counted once, at its own length, whatever the number of choices."""
        from constitutional.backends.local import continuation_ids

        texts = [self.render(p) for p in prompts]
        pairs, lengths = (
            [],
            [],
        )  # (prompt ids + choice ids, number of choice tokens); prompt lengths
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            lengths.append(len(ids))
            for choice in choices:
                tail = continuation_ids(self.tokenizer, text, ids, choice)
                pairs.append((ids + tail, len(tail)))
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids, _ in pairs], params, use_tqdm=False
        )
        scores = [
            sum(step[tok].logprob for tok, step in zip(ids[-n:], out.prompt_logprobs[-n:]))
            for (ids, n), out in zip(pairs, outputs)
        ]
        k = len(choices)
        return [scores[i : i + k] for i in range(0, len(scores), k)], lengths
