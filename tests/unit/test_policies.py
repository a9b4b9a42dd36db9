"""prosody-lm, codec-lm (DAC and Llasa's X-codec2) and csm: real tiny models of the real
architectures, saved and loaded through the real loaders.

Every policy must sample valid completions, give the same log-probs as a direct forward
pass (per frame for CSM), use the LoRA-disabled network as reference, and train only its
LoRA weights.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from rlaif.api.models import LoraSpec
from rlaif.constants import SAMPLE_RATE
from rlaif.data import Prompt, VoiceReference
from rlaif.trainer.grpo import GRPOLossConfig, grpo_loss
from rlaif.trainer.policies.base import SpeechLMPolicy, TokenLMPolicy
from rlaif.trainer.policies.codec_lm import CodecLM, codec_layout
from rlaif.trainer.policies.csm import CSM
from rlaif.trainer.policies.prosody_lm import (
    SLOTS,
    ProsodyLM,
    ProsodyProgram,
    builtin_model_dir,
    write_model_dir,
)
from rlaif.trainer.policies.tiny import (
    tiny_mimi,
    tiny_xcodec2,
    write_tiny_csm,
    write_tiny_llasa,
    write_tiny_model_dirs,
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
    """A tiny LM over DAC's two RVQ codebooks."""
    d = tmp_path_factory.mktemp("codec-lm")
    write_tiny_model_dirs(d / "lm", d / "codec")
    return CodecLM(d / "lm", d / "codec", "lora", LORA, CPU, torch.float32)


@pytest.fixture(scope="module")
def llasa(tmp_path_factory: pytest.TempPathFactory) -> CodecLM:
    """Llasa's architecture: Llama, Llama-3-style tokenizer, X-codec2 (one FSQ codebook)."""
    d = tmp_path_factory.mktemp("llasa")
    write_tiny_llasa(d / "lm", d / "codec")
    return CodecLM(d / "lm", d / "codec", "lora", LORA, CPU, torch.float32)


@pytest.fixture(scope="module")
def csm(tmp_path_factory: pytest.TempPathFactory) -> CSM:
    d = tmp_path_factory.mktemp("csm")
    write_tiny_csm(d)
    return CSM(d, "lora", LORA, CPU, torch.float32)


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> VoiceReference:
    wav = tmp_path_factory.mktemp("voice") / "ref.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "-p", "30", "Good morning to you."],
                   check=True)
    return VoiceReference(wav, "Good morning to you.")


def allowed_tokens(policy: TokenLMPolicy, length: int) -> torch.Tensor:
    """Bool [length, V]: the policy's token slice spread over the whole vocabulary."""
    vocab = policy.token_slice()
    head = policy.model.get_output_embeddings()  # type: ignore[operator]
    allowed = torch.zeros(length, head.weight.shape[0], dtype=torch.bool)
    allowed[:, vocab.ids] = vocab.mask(length)
    return allowed


@pytest.fixture(params=["prosody", "codec", "llasa"])
def policy(request: pytest.FixtureRequest) -> TokenLMPolicy:
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


def test_samples_follow_the_allowed_tokens_and_stop(policy: TokenLMPolicy) -> None:
    torch.manual_seed(0)
    out = policy.sample(PROMPT, 4, 12)
    allowed = allowed_tokens(policy, out.ids.shape[1])
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


def test_logprobs_match_a_direct_forward_pass(policy: TokenLMPolicy) -> None:
    torch.manual_seed(2)
    out = policy.sample(PROMPT, 4, 10, temperature=0.8)
    recomputed = policy.logprobs(PROMPT, out.ids, temperature=0.8)
    assert torch.allclose(recomputed * out.mask, out.logprobs, atol=1e-5)
    prompt_ids = policy.encode_prompt(PROMPT)
    full = torch.cat([prompt_ids, out.ids[0]]).unsqueeze(0)
    with torch.no_grad():
        logits = policy.model(input_ids=full).logits[0, len(prompt_ids) - 1:-1] / 0.8
    allowed = allowed_tokens(policy, out.ids.shape[1])
    logits[~allowed] = float("-inf")
    direct = torch.log_softmax(logits, -1).gather(-1, out.ids[0].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(direct * out.mask[0], out.logprobs[0], atol=1e-5)


PROMPTS = [Prompt("Hi.", {"emotion": "Positive"}), PROMPT,
           Prompt("No, it leaves from the other side", {"structure": "Statement"})]
"""Prompts of different lengths: batched, the short ones are left-padded."""


def test_batched_groups_sample_what_each_prompt_alone_would(policy: TokenLMPolicy) -> None:
    lengths = {len(policy.encode_prompt(p)) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # the padding is exercised
    torch.manual_seed(4)
    groups = policy.sample_groups(PROMPTS, 3, 10, temperature=0.8)
    assert len(groups) == len(PROMPTS)
    for prompt, out in zip(PROMPTS, groups, strict=True):
        recomputed = policy.logprobs(prompt, out.ids, temperature=0.8)
        assert torch.allclose(recomputed * out.mask, out.logprobs, atol=1e-5)
        assert out.drift(recomputed) < 1e-5
        allowed = allowed_tokens(policy, out.ids.shape[1])
        assert out.mask[:, -1].any()  # cut to the group's own longest completion
        for row, mask in zip(out.ids.tolist(), out.mask.tolist(), strict=True):
            live = int(sum(mask))
            assert mask == [1.0] * live + [0.0] * (len(mask) - live)
            assert all(allowed[t, tok] for t, tok in enumerate(row[:live]))
            assert policy.stop_id not in row[:live - 1]  # nothing sampled after a stop
            assert row[live:] == [policy.pad_id] * (len(row) - live)
            assert live == len(row) or row[live - 1] == policy.stop_id
        assert out.entropy > 0


def test_batched_greedy_decoding_equals_each_prompt_decoded_alone(policy: TokenLMPolicy) -> None:
    """Greedy decoding follows the whole distribution's argmax at every step: padding,
    masks or positions that leaked into a row would change its tokens."""
    groups = policy.sample_groups(PROMPTS, 2, 10, top_p=1e-9)
    for prompt, batched in zip(PROMPTS, groups, strict=True):
        alone = policy.sample(prompt, 2, 10, top_p=1e-9)
        assert torch.equal(batched.ids, alone.ids) and torch.equal(batched.mask, alone.mask)
        assert torch.allclose(batched.logprobs, alone.logprobs, atol=1e-5)
        assert batched.entropy == pytest.approx(alone.entropy, abs=1e-5)


def test_policies_without_batching_sample_their_groups_one_by_one(csm: CSM) -> None:
    torch.manual_seed(5)
    groups = csm.sample_groups(PROMPTS[:2], 2, 4)
    torch.manual_seed(5)
    alone = [csm.sample(p, 2, 4) for p in PROMPTS[:2]]
    assert all(torch.equal(g.ids, a.ids) for g, a in zip(groups, alone, strict=True))


@pytest.fixture(params=["prosody", "codec", "llasa", "csm"])
def any_policy(request: pytest.FixtureRequest) -> SpeechLMPolicy:
    return request.getfixturevalue(request.param)


def test_update_changes_only_lora_weights_and_moves_away_from_reference(
        any_policy: SpeechLMPolicy) -> None:
    policy = any_policy
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
    allowed = allowed_tokens(codec, 4)
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


# ---------------------------------------------------------------------------- Llasa


def test_codebook_layout_comes_from_the_codec_config() -> None:
    from transformers import DacConfig

    assert codec_layout(tiny_xcodec2().config) == (1, 64)  # FSQ: 4 x 4 x 4 levels
    assert codec_layout(DacConfig(n_codebooks=3, codebook_size=32)) == (3, 32)  # RVQ
    assert codec_layout(tiny_mimi(n_codebooks=5, codebook_size=16)) == (5, 16)
    with pytest.raises(ValueError, match="neither quantization_levels"):
        codec_layout(object())


def decoded(policy: CodecLM, ids: torch.Tensor) -> str:
    """The prompt as text (the tiny tokenizer's character tokens decode space-separated)."""
    text = policy.tokenizer.decode(ids)
    assert isinstance(text, str)
    return text.replace(" ", "")


def test_llasa_prompt_is_its_chat_template_and_stops_at_speech_end(llasa: CodecLM) -> None:
    text = decoded(llasa, llasa.encode_prompt(PROMPT))
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    assert ("Convertthetexttospeech:<|TEXT_UNDERSTANDING_START|>Well,isthistherightplatform"
            "forthetrain?<|TEXT_UNDERSTANDING_END|><|eot_id|>") in text
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>"
                         "\n\n<|SPEECH_GENERATION_START|>")
    assert "Confused" not in text
    assert llasa.tokenizer.convert_ids_to_tokens(llasa.stop_id) == "<|SPEECH_GENERATION_END|>"
    llasa.label_instruction = True
    try:
        labelled = decoded(llasa, llasa.encode_prompt(PROMPT))
    finally:
        llasa.label_instruction = False
    assert "structure:Question,emotion:Confused,speechrate:Slow,intonation:Interrogative" in (
        labelled)


def test_llasa_voice_prompt_prefixes_the_reference_codes_and_renders_only_new_speech(
        llasa: CodecLM, voice: VoiceReference) -> None:
    cloned = Prompt("Hello there.", PROMPT.labels, voice)
    codes = llasa.voice_codes(voice)[0]
    assert codes.shape[0] == pytest.approx(len(voice.waveform()) / SAMPLE_RATE * 50, abs=2)
    ids = llasa.encode_prompt(cloned)
    assert ids[-len(codes):].tolist() == llasa.speech_ids[codes].tolist()  # the voice prefix
    text = decoded(llasa, ids[:-len(codes)])
    assert "<|TEXT_UNDERSTANDING_START|>Goodmorningtoyou.Hellothere." in text
    assert text.endswith("<|SPEECH_GENERATION_START|>")
    torch.manual_seed(4)
    out = llasa.sample(cloned, 2, 6)
    assert torch.allclose(llasa.logprobs(cloned, out.ids) * out.mask, out.logprobs, atol=1e-5)
    tokens = [int(llasa.speech_ids[k]) for k in (1, 2, 3)]
    assert len(llasa.render(tokens, cloned)) == 3 * 320  # 3 frames of 20 ms: voice cut off


# ---------------------------------------------------------------------------- CSM


def test_csm_samples_frames_whose_logprob_sums_its_codebooks(csm: CSM) -> None:
    torch.manual_seed(5)
    out = csm.sample(PROMPT, 3, 5, temperature=0.8)
    assert out.ids.shape == (3, 5, csm.n_codebooks) and out.logprobs.shape == (3, 5)
    assert (out.ids[out.mask.bool()] < csm.codebook_size).all()
    assert torch.allclose(csm.logprobs(PROMPT, out.ids, 0.8) * out.mask, out.logprobs,
                          atol=1e-5)
    # Direct: the model's own forward for codebook 0, the depth decoder's for the rest.
    model = CSM._csm(csm.model)
    frames = out.ids[0]
    with torch.no_grad():
        embeds = torch.cat([csm.prompt_embeddings(model, PROMPT),
                            model.backbone_model.embed_tokens(frames[None])[0]])
        hidden = model.backbone_model(inputs_embeds=embeds[None]).last_hidden_state[0]
        hidden = hidden[-len(frames) - 1:-1]
        first = model(inputs_embeds=embeds[None]).logits[0, -len(frames) - 1:-1]
        total = torch.log_softmax(first[:, :csm.codebook_size] / 0.8, -1).gather(
            -1, frames[:, :1])[:, 0]
        for t, frame in enumerate(frames):
            start = torch.cat([torch.zeros(1, dtype=torch.long), frame[:-1]])[None]
            logits = model.depth_decoder(input_ids=start,
                                         backbone_last_hidden_state=hidden[t:t + 1]).logits[0]
            logp = torch.log_softmax(logits[:, :csm.codebook_size] / 0.8, -1)
            total[t] += logp.gather(-1, frame[1:, None]).sum()
    assert torch.allclose(total, out.logprobs[0], atol=1e-4)


def test_csm_stop_frame_ends_a_completion_and_is_not_rendered(csm: CSM) -> None:
    c = csm.n_codebooks
    stop = [csm.stop_id] * (c - 1) + [7]
    ids = torch.tensor([[[1] * c, [2] * c, stop], [[3] * c, [4] * c, [5] * c]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert csm.completion_tokens(ids, mask) == [[1] * c + [2] * c, [3] * c + [4] * c]
    audio = csm.render([1] * c + [2] * c, PROMPT)
    assert audio.dtype == np.float32 and len(audio) == 2 * 1280  # 2 frames x 80 ms at 16 kHz
    assert len(csm.render([], PROMPT)) > 0


def test_csm_lora_is_on_the_backbone_only(csm: CSM) -> None:
    trained = {k for k, p in csm.model.named_parameters() if p.requires_grad}
    assert trained and all("backbone_model" in k and "lora_" in k for k in trained)
    assert any(".q_proj." in k for k in trained) and any(".v_proj." in k for k in trained)


def test_csm_voice_prompt_is_a_context_segment_of_its_mimi_codes(
        csm: CSM, voice: VoiceReference) -> None:
    cloned = Prompt("Hello there.", PROMPT.labels, voice)
    codes = csm.voice_codes(voice)
    assert codes.shape == (pytest.approx(len(voice.waveform()) / SAMPLE_RATE * 12.5, abs=1.5),
                           csm.n_codebooks)
    model = CSM._csm(csm.model)
    with torch.no_grad():
        bare, cloned_embeds = (csm.prompt_embeddings(model, PROMPT),
                               csm.prompt_embeddings(model, cloned))
    ref_text = len(csm._text(voice.text))
    assert cloned_embeds.shape[0] == ref_text + len(codes) + 1 + len(csm._text(cloned.text))
    assert bare.shape[0] == len(csm._text(PROMPT.text))
    torch.manual_seed(7)
    out = csm.sample(cloned, 2, 3)
    assert torch.allclose(csm.logprobs(cloned, out.ids) * out.mask, out.logprobs, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_logprobs_and_gradients(tmp_path: Path) -> None:
    write_tiny_llasa(tmp_path / "lm", tmp_path / "codec")
    plain, checkpointed = (CodecLM(tmp_path / "lm", tmp_path / "codec", "lora", LORA, CPU,
                                   torch.float32, gradient_checkpointing=ckpt)
                           for ckpt in (False, True))
    checkpointed.model.load_state_dict(plain.model.state_dict())
    torch.manual_seed(8)
    ids = plain.sample(PROMPT, 2, 6).ids
    grads = []
    for policy in (plain, checkpointed):
        policy.model.train()
        logp = policy.logprobs(PROMPT, ids)
        grads.append(torch.autograd.grad(logp.sum(), policy.trainable_parameters()))
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.model.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in plain.model.modules())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


def test_token_slice_reads_the_head_as_runs_of_consecutive_rows(llasa: CodecLM) -> None:
    from rlaif.trainer.policies.base import TokenSlice

    vocab = TokenSlice.build(torch.tensor([5, 6, 7, 10, 11, 3]), torch.ones(1, 6))
    assert vocab.runs == [(3, 1), (5, 3), (10, 2)]
    runs = llasa.token_slice().runs  # Llasa: the speech tokens, then the stop token apart
    assert sum(n for _, n in runs) == llasa.codebook_size + 1 and len(runs) == 2
