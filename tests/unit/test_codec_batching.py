"""Codec decoders render a group in batches: every sample's audio is what decoding it alone
gives (within float rounding), with as few ``codec.decode`` calls as that allows.

Real tiny codecs of each kind, saved and loaded through the policies' loaders: DAC and
X-codec2 (Llasa) under codec-lm, whose decoders are not causal (only equal frame counts
share a call), and Mimi, causal (a whole group right-padded in one call), under codec-lm
and inside CSM. ``codec.decode`` is the real one, wrapped to record the batches it gets.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rlaif.api.models import LoraSpec
from rlaif.data import Prompt, VoiceReference
from rlaif.trainer.policies.base import SpeechLMPolicy, silence
from rlaif.trainer.policies.codec_lm import CodecLM
from rlaif.trainer.policies.csm import CSM
from rlaif.trainer.policies.tiny import (
    tiny_llama,
    tiny_mimi,
    write_tiny_csm,
    write_tiny_llasa,
    write_tiny_model_dirs,
    write_tiny_tokenizer,
)
from rlaif.trainer.rendering import RenderQueue, pads_exactly

LORA = LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
CPU = torch.device("cpu")
ATOL = 1e-5
"""Batched vs alone: the same arithmetic in other batch shapes, so only float rounding
differs (DAC, X-codec2: ~1e-8; Mimi's padded batch: ~1e-6 after clipping)."""
FRAMES = [3, 2, 0, 3, 5]
"""A group's frame counts: repeated, distinct and empty (which renders to silence). Two
at least: the tiny X-codec2's GroupNorm (one channel per group) needs two values."""
KINDS = ["dac", "llasa", "mimi", "csm"]


def write_tiny_mimi_codec_lm(model_dir: Path, codec_dir: Path, n_codebooks: int = 2,
                             codebook_size: int = 64) -> None:
    """codec-lm over Mimi: a tiny Llama with one token per code, and a random Mimi."""
    from transformers import MimiModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tokenizer = write_tiny_tokenizer(model_dir, n_codebooks * codebook_size)
        tiny_llama(tokenizer).save_pretrained(str(model_dir))
        codec: Any = MimiModel(tiny_mimi(n_codebooks, codebook_size))
        with torch.no_grad():  # zero codebooks would make every code sound alike
            for module in codec.modules():
                if isinstance(getattr(module, "embed_sum", None), torch.Tensor):
                    module.embed_sum.normal_()
    codec.save_pretrained(str(codec_dir))


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CodecLM | CSM]:
    d = tmp_path_factory.mktemp("codecs")
    write_tiny_model_dirs(d / "dac-lm", d / "dac")
    write_tiny_llasa(d / "llasa-lm", d / "xcodec2")
    write_tiny_mimi_codec_lm(d / "mimi-lm", d / "mimi")
    write_tiny_csm(d / "csm")
    return {"dac": CodecLM(d / "dac-lm", d / "dac", "lora", LORA, CPU, torch.float32),
            "llasa": CodecLM(d / "llasa-lm", d / "xcodec2", "lora", LORA, CPU, torch.float32),
            "mimi": CodecLM(d / "mimi-lm", d / "mimi", "lora", LORA, CPU, torch.float32),
            "csm": CSM(d / "csm", "lora", LORA, CPU, torch.float32)}


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> VoiceReference:
    wav = tmp_path_factory.mktemp("voice") / "ref.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "-p", "30", "Hi."], check=True)
    return VoiceReference(wav, "Hi.")


def group(policy: SpeechLMPolicy, frames: list[int], seed: int = 0) -> list[list[int]]:
    """Random completions of ``frames`` whole frames each, as the policy's tokens."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(policy, CSM):
        return [torch.randint(0, policy.codebook_size, (n * policy.n_codebooks,),
                              generator=gen).tolist() for n in frames]
    assert isinstance(policy, CodecLM)
    rows = []
    for n in frames:
        codes = torch.randint(0, policy.codebook_size, (n * policy.n_codebooks,), generator=gen)
        rows.append([int(policy.speech_ids[policy.code_token(int(k), t)])
                     for t, k in enumerate(codes)])
    return rows


@pytest.fixture
def decode_batches(policies: dict[str, CodecLM | CSM], request: pytest.FixtureRequest
                   ) -> Iterator[list[int]]:
    """The batch size of each ``codec.decode`` call of the policy under test (the real
    decode, wrapped)."""
    codec: Any = policies[request.node.callspec.params["kind"]].codec  # type: ignore[attr-defined]
    real, sizes = codec.decode, []

    def spy(*args: Any, **kwargs: Any) -> Any:
        sizes.append(int(kwargs["audio_codes"].shape[0]))
        return real(*args, **kwargs)

    codec.decode = spy
    try:
        yield sizes
    finally:
        del codec.decode  # the instance attribute goes, the class's method is back


def assert_same_audio(batched: list[np.ndarray], alone: list[np.ndarray]) -> None:
    assert len(batched) == len(alone)
    for b, a in zip(batched, alone, strict=True):
        assert b.dtype == np.float32 and b.shape == a.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cloned", [False, True], ids=["plain", "voice"])
def test_a_group_renders_in_batches_as_each_sample_alone(
        kind: str, cloned: bool, policies: dict[str, CodecLM | CSM], voice: VoiceReference,
        decode_batches: list[int]) -> None:
    """With a voice prompt, codec-lm decodes it before each sample and cuts its part off
    (CSM's voice prompt is LM context, never decoded)."""
    policy = policies[kind]
    prompt = Prompt("Hello there.", {}, voice if cloned else None)
    completions = group(policy, FRAMES)
    batched = policy.render_group(completions, prompt)
    calls = list(decode_batches)
    alone = [policy.render(ids, prompt) for ids in completions]
    assert_same_audio(batched, alone)
    assert np.array_equal(batched[FRAMES.index(0)], silence())
    assert len(batched[0]) > len(batched[1]) > 0  # samples kept apart
    if pads_exactly(policy.codec.config):
        assert calls == [4]  # the four non-empty samples, right-padded, in one call
    else:
        assert sorted(calls) == [1, 1, 2]  # one call per frame count: 3 (twice), 2, 5
    assert len(decode_batches) == len(calls) + 4  # alone: one call per non-empty sample


def test_only_a_causal_mimi_decoder_is_padded(policies: dict[str, CodecLM | CSM]) -> None:
    from transformers import MimiConfig

    assert [pads_exactly(policies[k].codec.config) for k in KINDS] == [False, False, True,
                                                                       True]
    assert not pads_exactly(MimiConfig(use_causal_conv=False))


@pytest.mark.parametrize("kind", ["dac", "mimi"])
def test_render_queue_decodes_each_group_at_once_and_hands_samples_over_in_order(
        kind: str, policies: dict[str, CodecLM | CSM], decode_batches: list[int]) -> None:
    policy = policies[kind]
    groups = [(group(policy, [2, 2, 2], seed=1), Prompt("One.")),
              (group(policy, [4, 0, 2], seed=2), Prompt("Two."))]
    audio: list[np.ndarray] = []
    seen: list[tuple[int, np.ndarray]] = []
    with RenderQueue.of(policy, audio, lambda i, wave: seen.append((i, wave))) as queue:
        queue.add(*groups[0])
        assert [i for i, _ in seen] == [0, 1, 2]  # inline: handed over at once
        queue.add(*groups[1])
    assert decode_batches == ([3, 2] if kind == "mimi" else [3, 1, 1])
    alone = [policy.render(ids, prompt) for completions, prompt in groups for ids in completions]
    assert [i for i, _ in seen] == list(range(6))
    assert all(wave is a for (_, wave), a in zip(seen, audio, strict=True))
    assert_same_audio(audio, alone)


def test_a_group_renderer_must_return_a_wave_per_completion() -> None:
    def drops_one(completions: list[list[int]], prompt: Prompt) -> list[np.ndarray]:
        return [silence() for _ in completions[1:]]

    with pytest.raises(RuntimeError, match="1 waves for 2 completions"), \
            RenderQueue(lambda ids, prompt: silence(), False, [], None, drops_one) as queue:
        queue.add([[1], [2]], Prompt("One."))
