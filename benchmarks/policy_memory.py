"""Peak memory and throughput of one GRPO update for 1B-class speech LMs.

Random-init checkpoints shaped like Llasa-1B (Llama-3.2-1B + 65,536 X-codec2 tokens: a
193,800-token vocabulary, tied embeddings) and CSM-1B (the same backbone, a 4-layer depth
decoder, 32 Mimi codebooks of 2,048 codes) are written with save_pretrained and loaded
through the policies (the codecs stay tiny: they do not take part in the update). One
update = reference log-probs (adapters off, no grad) + policy log-probs + GRPO loss +
backward, on G fixed completions of T tokens (frames for CSM), LoRA r 16 on the attention
projections.

Modes: ``slice`` is the policy as shipped (the head on the allowed speech-token slice, the
prompt's positions skipped); ``dense`` is the previous implementation for comparison (full
vocabulary logits for every position, a float32 copy, a dense mask, log-softmax over all of
it); ``+ckpt`` adds gradient checkpointing. Each case runs in its own process and times
the second of two updates. Memory: ``update`` is how far that update raised the resident
set above the loaded, warmed-up model (activations, logits, gradients: the part the
policy's implementation decides); ``peak`` is the process's high-water mark (on CPU set by
loading the float32 weights); ``gpu`` torch's allocator peak of the update on a GPU.

    python benchmarks/policy_memory.py                       # CPU, reduced length
    python benchmarks/policy_memory.py --tokens 1024 --group 8   # full length (GPU, bf16)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rlaif.api.models import LoraSpec
from rlaif.data import Prompt
from rlaif.trainer.grpo import GRPOLossConfig, grpo_loss
from rlaif.trainer.policies.tiny import LLAMA_1B, write_tiny_csm, write_tiny_llasa

PROMPT = Prompt("The committee approved the new budget after a long debate about roads.")
LORA = LoraSpec(r=16, alpha=32, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj",
                                                             "o_proj"])
CSM_DEPTH: dict[str, Any] = dict(hidden_size=1024, intermediate_size=8192, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=2, head_dim=128)
CASES = [("llasa", "dense", False), ("llasa", "slice", False), ("llasa", "slice", True),
         ("csm", "slice", False), ("csm", "slice", True)]


def rss_bytes() -> int:
    """Anonymous resident memory: tensors, not the memory-mapped weight files (whose pages
    the kernel may drop and read again under pressure)."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


class PeakRSS:
    """The largest anonymous resident set seen while the block runs (sampled every 2 ms).
    Workers run with MALLOC_MMAP_THRESHOLD_ low, so a freed tensor leaves it at once."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def rise_gib(self) -> float:
        return (self.peak - self.start) / 2**30


def dense_logprobs(policy: Any, prompt: Prompt, ids: torch.Tensor, temperature: float = 1.0,
                   model: torch.nn.Module | None = None) -> torch.Tensor:
    """The previous TokenLMPolicy.logprobs: full-vocabulary logits, float copy, dense mask."""
    model = model if model is not None else policy.model
    prompt_ids = policy.encode_prompt(prompt)
    full = torch.cat([prompt_ids.expand(ids.shape[0], -1), ids], dim=1)
    logits = model(input_ids=full).logits[:, prompt_ids.shape[0] - 1:-1]
    vocab = policy.token_slice()
    allowed = torch.zeros(ids.shape[1], logits.shape[-1], dtype=torch.bool)
    allowed[:, vocab.ids] = vocab.mask(ids.shape[1])
    scores = logits.float() / temperature
    logp = F.log_softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    lp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return torch.where(torch.isfinite(lp), lp, torch.zeros_like(lp))


def load(model: str, root: Path, checkpointing: bool, dtype: torch.dtype) -> Any:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if model == "llasa":
        from rlaif.trainer.policies.codec_lm import CodecLM

        return CodecLM(root / "llasa", root / "xcodec2", "lora", LORA, device, dtype,
                       gradient_checkpointing=checkpointing)
    from rlaif.trainer.policies.csm import CSM

    return CSM(root / "csm", "lora", LORA, device, dtype, gradient_checkpointing=checkpointing)


def completions(policy: Any, model: str, group: int, tokens: int) -> torch.Tensor:
    """G fixed completions of T valid tokens (frames), none of them a stop."""
    if model == "llasa":
        ids = policy.speech_ids[torch.randint(0, policy.codebook_size, (group, tokens))]
        return ids.to(policy.device)
    return torch.randint(1, policy.codebook_size, (group, tokens, policy.n_codebooks),
                         device=policy.device)


def update(policy: Any, ids: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
           ) -> None:
    """One GRPO update's forward and backward passes (reference, policy, loss)."""
    with torch.no_grad(), policy.reference_model() as ref:
        ref_logp = policy.logprobs(PROMPT, ids, model=ref)
    logp = policy.logprobs(PROMPT, ids)
    loss, _ = grpo_loss(logp, logp.detach(), ref_logp, advantages, mask,
                        GRPOLossConfig(kl_coef=0.02))
    loss.backward()


def one_case(model: str, mode: str, checkpointing: bool, root: Path, group: int,
             tokens: int) -> dict[str, Any]:
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    policy = load(model, root, checkpointing, dtype)
    if mode == "dense":
        policy.logprobs = lambda *a, **k: dense_logprobs(policy, *a, **k)
    torch.manual_seed(0)
    ids = completions(policy, model, group, tokens)
    mask = torch.ones(ids.shape[:2], device=policy.device)
    advantages = torch.linspace(-1, 1, group, device=policy.device)
    policy.model.train()
    update(policy, ids, mask, advantages)  # warm-up: weights paged in, allocator settled
    policy.model.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as peak:
        start = time.perf_counter()
        update(policy, ids, mask, advantages)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    result = {"model": model, "mode": mode + ("+ckpt" if checkpointing else ""),
              "device": str(policy.device), "dtype": str(dtype).removeprefix("torch."),
              "group": group, "tokens": tokens, "seconds": round(seconds, 2),
              "tokens_per_s": round(group * tokens / seconds, 1),
              "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                    / 2**20, 2),
              "update_gib": round(peak.rise_gib, 3)}
    if torch.cuda.is_available():
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


LLASA_VOCAB = 128_256 + 8 + 65_536
"""Llasa-1B's vocabulary: Llama 3's text tokens, its 8 specials, one token per X-codec2 code
(the small offline tokenizer holds the specials and speech tokens; the rest is embedding)."""


def write_models(root: Path) -> None:
    """The 1B-shaped checkpoints, each unless already written under ``root``."""
    if not (root / "llasa" / "config.json").exists():
        write_tiny_llasa(root / "llasa", root / "xcodec2", **LLAMA_1B,
                         tie_word_embeddings=True, vocab_size=LLASA_VOCAB)
    if not (root / "csm" / "config.json").exists():
        write_tiny_csm(root / "csm", n_codebooks=32, codebook_size=2048, backbone=LLAMA_1B,
                       depth=CSM_DEPTH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", type=int, default=2, help="completions per update (G)")
    parser.add_argument("--tokens", type=int, default=64, help="Llasa tokens per completion")
    parser.add_argument("--frames", type=int, default=16, help="CSM frames per completion")
    parser.add_argument("--only", choices=["llasa", "csm"], default=None)
    parser.add_argument("--models", type=Path, default=None,
                        help="keep the written checkpoints here (reused when present)")
    parser.add_argument("--case", nargs=3, metavar=("MODEL", "MODE", "CKPT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        model, mode, ckpt = args.case
        length = args.tokens if model == "llasa" else args.frames
        print(json.dumps(one_case(model, mode, ckpt == "1", args.root, args.group, length)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.models or Path(tmp)
        write_models(root)
        print(f"{'model':6} {'mode':11} {'G':>2} {'T':>5} {'s':>7} {'tok/s':>7} "
              f"{'update GiB':>10} {'peak GiB':>9}")
        for model, mode, ckpt in CASES:
            if args.only and model != args.only:
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--case", model, mode, str(int(ckpt)), "--root",
                 str(root), "--group", str(args.group), "--tokens", str(args.tokens),
                 "--frames", str(args.frames)], capture_output=True, text=True, check=True,
                env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
            r = json.loads(out.stdout.strip().splitlines()[-1])
            gpu = f" gpu {r['peak_gpu_gib']} GiB" if "peak_gpu_gib" in r else ""
            print(f"{r['model']:6} {r['mode']:11} {r['group']:>2} {r['tokens']:>5} "
                  f"{r['seconds']:>7} {r['tokens_per_s']:>7} {r['update_gib']:>10} "
                  f"{r['peak_rss_gib']:>9}{gpu}", flush=True)


if __name__ == "__main__":
    main()
