"""prosody-lm and codec-lm: real tiny models, saved and loaded through the real loaders.

Both policies must sample valid completions, give the same log-probs as a direct forward
pass, use the LoRA-disabled network as reference, and train only their LoRA weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlaif.api.models import LoraSpec
from rlaif.constants import SAMPLE_RATE
from rlaif.data import Prompt
from rlaif.trainer.grpo import GRPOLossConfig, grpo_loss
from rlaif.trainer.policies.base import SpeechLMPolicy
from rlaif.trainer.policies.codec_lm import CodecLM, write_tiny_model_dirs
from rlaif.trainer.policies.prosody_lm import (
    SLOTS,
    ProsodyLM,
    ProsodyProgram,
    builtin_model_dir,
    write_model_dir,
)

LORA = LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
PROMPT = Prompt("Well, is this the right platform for the train?",
                {"structure": "Question", "emotion": "Confused", "speechRate": "Slow",
                 "intonation": "Interrogative"})
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prosody(tmp_path_factory: pytest.TempPathFactory) -> ProsodyLM:
    d = tmp_path_factory.mktemp("prosody-lm")
    write_model_dir(d)
    return ProsodyLM(d, "lora", LORA, CPU, torch.float32)


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> CodecLM:
    d = tmp_path_factory.mktemp("codec-lm")
    write_tiny_model_dirs(d / "lm", d / "codec")
    return CodecLM(d / "lm", d / "codec", "lora", LORA, CPU, torch.float32)


@pytest.fixture(params=["prosody", "codec"])
def policy(request: pytest.FixtureRequest) -> SpeechLMPolicy:
    return request.getfixturevalue(request.param)


def test_builtin_prosody_lm_is_created_once_and_deterministically(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path / "a"))
    first = builtin_model_dir()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert builtin_model_dir() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp left
    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path / "b"))
    a, b = load_file(first / "model.safetensors"), load_file(
        builtin_model_dir() / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_samples_follow_the_allowed_tokens_and_stop(policy: SpeechLMPolicy) -> None:
    torch.manual_seed(0)
    out = policy.sample(PROMPT, 4, 12)
    allowed = policy.allowed_tokens(out.ids.shape[1])
    assert allowed is not None  # both policies restrict tokens by position
    for row, mask in zip(out.ids, out.mask, strict=True):
        for t, (tok, live) in enumerate(zip(row.tolist(), mask.tolist(), strict=True)):
            if live:
                assert allowed[t, tok], f"token {tok} not allowed at position {t}"
    assert out.entropy > 0
    assert (out.logprobs <= 0).all()


def test_prosody_completion_is_one_value_per_slot_then_eos(prosody: ProsodyLM) -> None:
    torch.manual_seed(1)
    out = prosody.sample(PROMPT, 3, 16)
    assert out.ids.shape[1] == len(SLOTS) + 1  # stopped as soon as the program was complete
    assert (out.ids[:, -1] == prosody.stop_id).all()
    for tokens in prosody.completion_tokens(out.ids, out.mask):
        program = prosody.program(tokens)
        assert str(program).split() == [prosody.tokens[t] for t in tokens]


def test_logprobs_match_a_direct_forward_pass(policy: SpeechLMPolicy) -> None:
    torch.manual_seed(2)
    out = policy.sample(PROMPT, 4, 10, temperature=0.8)
    recomputed = policy.logprobs(PROMPT, out.ids, temperature=0.8)
    assert torch.allclose(recomputed * out.mask, out.logprobs, atol=1e-5)
    prompt_ids = policy.encode_prompt(PROMPT)
    full = torch.cat([prompt_ids, out.ids[0]]).unsqueeze(0)
    with torch.no_grad():
        logits = policy.model(input_ids=full).logits[0, len(prompt_ids) - 1:-1] / 0.8
    allowed = policy.allowed_tokens(out.ids.shape[1])
    assert allowed is not None  # both policies restrict tokens by position
    logits[~allowed] = float("-inf")
    direct = torch.log_softmax(logits, -1).gather(-1, out.ids[0].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(direct * out.mask[0], out.logprobs[0], atol=1e-5)


def test_update_changes_only_lora_weights_and_moves_away_from_reference(
        policy: SpeechLMPolicy) -> None:
    torch.manual_seed(3)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    out = policy.sample(PROMPT, 4, 8)
    with policy.reference_model() as ref, torch.no_grad():
        ref_logp = policy.logprobs(PROMPT, out.ids, model=ref)
    optimizer = torch.optim.Adam(policy.trainable_parameters(), lr=1e-2)
    for _ in range(3):
        logp = policy.logprobs(PROMPT, out.ids)
        loss, _ = grpo_loss(logp, logp.detach(), ref_logp, torch.tensor([1.0, -1.0, 0.5, -0.5]),
                            out.mask, GRPOLossConfig(kl_coef=0.01))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = policy.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    with torch.no_grad():
        new = policy.logprobs(PROMPT, out.ids)
        with policy.reference_model() as ref:
            still_ref = policy.logprobs(PROMPT, out.ids, model=ref)
    assert torch.allclose(still_ref, ref_logp)  # adapters off = the untouched base model
    assert not torch.allclose(new * out.mask, ref_logp * out.mask, atol=1e-4)
    policy.model.load_state_dict(before)


def test_prosody_program_drives_espeak_ssml(prosody: ProsodyLM) -> None:
    program = ProsodyProgram(rate="145", pitch="-20", pause="350", end="question")
    ssml = program.ssml("Well, is this the platform; or not.")
    assert 'rate="145%"' in ssml and 'pitch="-20%"' in ssml
    assert ssml.count('<break time="350ms"/>') == 2 and "or not?" in ssml
    slow = prosody.render([prosody.index["rate=50"]], PROMPT)
    fast = prosody.render([prosody.index["rate=175"]], PROMPT)
    assert slow.dtype == np.float32 and np.abs(slow).max() > 0.01
    assert len(slow) > 1.8 * len(fast)  # espeak-ng really speaks slower
    assert 1.0 < len(fast) / SAMPLE_RATE < 4.0


def test_codec_lm_interleaves_codebooks_and_decodes_to_16k(codec: CodecLM) -> None:
    allowed = codec.allowed_tokens(4)
    book = codec.speech_ids.view(2, 64)
    assert allowed[0, book[0]].all() and not allowed[0, book[1]].any() and allowed[0, codec.stop_id]
    assert allowed[1, book[1]].all() and not allowed[1, codec.stop_id]
    tokens = [int(book[0, 5]), int(book[1, 7]), int(book[0, 9]), int(book[1, 11]),
              int(book[0, 1])]  # 2 whole frames + 1 dangling code
    assert codec.codes(tokens).tolist() == [[[5, 9], [7, 11]]]
    audio = codec.render(tokens, PROMPT)
    assert audio.dtype == np.float32 and len(audio) == 2 * 32  # 2 frames x hop 32 at 16 kHz
    assert len(codec.render([], PROMPT)) > 0  # no whole frame: short silence, still valid


def test_codec_lm_rejects_a_tokenizer_without_speech_tokens(tmp_path: Path) -> None:
    write_tiny_model_dirs(tmp_path / "lm", tmp_path / "codec", codebook_size=64)
    from transformers import DacConfig, DacModel

    DacModel(DacConfig(encoder_hidden_size=8, downsampling_ratios=[2, 4, 4],
                       decoder_hidden_size=32, n_codebooks=4, codebook_size=64,
                       codebook_dim=4)).save_pretrained(str(tmp_path / "codec4"))
    with pytest.raises(ValueError, match="lacks speech tokens"):
        CodecLM(tmp_path / "lm", tmp_path / "codec4", "lora", LORA, CPU, torch.float32)


def trained_prosody_policy(base: Path) -> ProsodyLM:
    """A prosody-lm with LoRA on q_proj and lm_head whose adapters are away from zero."""
    write_model_dir(base)
    lora = LoraSpec(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "lm_head"])
    policy = ProsodyLM(base, "lora", lora, CPU, torch.float32)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # stands in for training
    return policy


def test_saved_adapter_reloads_onto_the_base_model(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    policy = trained_prosody_policy(tmp_path / "base")
    policy.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "prosody_vocab.json").exists()
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"))
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ids = policy.encode_prompt(PROMPT).unsqueeze(0)
    with torch.no_grad():
        expected = policy.model.eval()(input_ids=ids).logits
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)
        with reloaded.disable_adapter():
            assert not torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-3)


def test_merged_model_loads_without_peft_and_matches_the_adapted_policy(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    policy = trained_prosody_policy(tmp_path / "base")
    ids = policy.encode_prompt(PROMPT).unsqueeze(0)
    with torch.no_grad():
        expected = policy.model.eval()(input_ids=ids).logits
    policy.save_merged(tmp_path / "merged")
    assert (tmp_path / "merged" / "prosody_vocab.json").exists()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")).eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
        assert not torch.allclose(base(input_ids=ids).logits, expected, atol=1e-3)
