"""Tiny random-init checkpoints of the real architectures, for tests and benchmarks.

Each writer builds the model with its real transformers class and a small Llama-3-style
tokenizer (made offline with ``tokenizers``; no hub download), and saves both with
``save_pretrained``, so the policy loads them through the production path. ``shape``
arguments scale the same builders up to 1B-class sizes for the memory benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlaif.trainer.policies.codec_lm import TEMPLATE_TOKENS, CodecLMSettings, codec_layout

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
"""Llama 3's chat layout (no system turn), which Llasa's tokenizer inherits."""

LLAMA_1B: dict[str, Any] = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                num_attention_heads=32, num_key_value_heads=8, head_dim=64)
"""Llama-3.2-1B's shape: Llasa-1B's LM (with tied embeddings) and CSM-1B's backbone."""


def write_tiny_tokenizer(model_dir: Path, n_speech_tokens: int = 0) -> Any:
    """A small Llama-3-style tokenizer: printable characters, Llama 3's special and header
    tokens and chat layout, Llasa's eight special tokens and ``<|s_0|>``.. speech tokens."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    core = Tokenizer(models.BPE({c: i for i, c in enumerate(chars)}, []))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>", chat_template=LLAMA3_CHAT_TEMPLATE)
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", *TEMPLATE_TOKENS,
        "<|TEXT_GENERATION_START|>", "<|TEXT_GENERATION_END|>", "<|SPEECH_UNDERSTANDING_START|>",
        "<|SPEECH_UNDERSTANDING_END|>"]})
    tokenizer.add_tokens([CodecLMSettings().speech_token.format(k)
                          for k in range(n_speech_tokens)], special_tokens=True)
    tokenizer.save_pretrained(str(model_dir))
    return tokenizer


def tiny_llama(tokenizer: Any, **shape: Any) -> Any:
    """A random Llama for ``tokenizer`` (hidden 64, 2 layers unless ``shape`` says otherwise)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=4,
                                  max_position_embeddings=2048, tie_word_embeddings=False)
    config.update(shape)  # vocab_size: a larger embedding, as Llama 3's 128,256 text tokens
    config.setdefault("vocab_size", len(tokenizer))
    return LlamaForCausalLM(LlamaConfig(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **config))


def tiny_xcodec2() -> Any:
    """A random X-codec2 (Xcodec2Model) with 4^3 = 64 FSQ codes at 50 frames/s, 16 kHz."""
    from transformers import Wav2Vec2BertConfig, Xcodec2Config, Xcodec2Model

    semantic = Wav2Vec2BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, output_hidden_size=32,
                                  conv_depthwise_kernel_size=3)
    return Xcodec2Model(Xcodec2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, encoder_hidden_size=8,
        semantic_model_config=semantic, quantization_dim=64, quantization_levels=[4, 4, 4]))


def write_tiny_llasa(model_dir: Path, codec_dir: Path, seed: int = 0, **shape: Any) -> None:
    """Llasa's architecture: Llama + Llama-3-style tokenizer + X-codec2 (toy size unless
    ``shape`` gives the LM's, e.g. ``LLAMA_1B``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        codec = tiny_xcodec2()
        tokenizer = write_tiny_tokenizer(model_dir, codec_layout(codec.config)[1])
        tiny_llama(tokenizer, **shape).save_pretrained(str(model_dir))
    codec.save_pretrained(str(codec_dir))


def write_tiny_model_dirs(model_dir: Path, codec_dir: Path, seed: int = 0,
                          n_codebooks: int = 2, codebook_size: int = 64) -> None:
    """A tiny random Llama + Llama-3-style tokenizer + DAC (an RVQ codec)."""
    from transformers import DacConfig, DacModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = write_tiny_tokenizer(model_dir, n_codebooks * codebook_size)
        tiny_llama(tokenizer).save_pretrained(str(model_dir))
        codec = DacModel(DacConfig(encoder_hidden_size=8, downsampling_ratios=[2, 4, 4],
                                   decoder_hidden_size=32, n_codebooks=n_codebooks,
                                   codebook_size=codebook_size, codebook_dim=4,
                                   sampling_rate=16000))
    codec.save_pretrained(str(codec_dir))


def tiny_mimi(n_codebooks: int = 4, codebook_size: int = 64) -> Any:
    """A random Mimi config (24 kHz, 12.5 frames/s) with ``n_codebooks`` x ``codebook_size``."""
    from transformers import MimiConfig

    return MimiConfig(hidden_size=32, num_filters=8, num_residual_layers=1,
                      codebook_size=codebook_size, codebook_dim=16, num_quantizers=n_codebooks,
                      vector_quantization_hidden_dimension=16, upsample_groups=32,
                      num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=16)


def write_tiny_csm(model_dir: Path, seed: int = 0, n_codebooks: int = 4,
                   codebook_size: int = 64, backbone: dict[str, Any] | None = None,
                   depth: dict[str, Any] | None = None) -> None:
    """Sesame CSM's architecture (CsmForConditionalGeneration: Llama backbone, depth decoder,
    Mimi inside) with a Llama-3-style tokenizer; toy size unless ``backbone``/``depth``
    give the shapes. Like CSM-1B, the codebook vocabulary is the codes plus 3 specials."""
    from transformers import CsmConfig, CsmDepthDecoderConfig, CsmForConditionalGeneration

    tokenizer = write_tiny_tokenizer(model_dir)
    vocab = codebook_size + 3
    backbone_shape: dict[str, Any] = dict(hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=4)
    backbone_shape.update(backbone or {})
    depth_shape: dict[str, Any] = dict(hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2,
                                       num_key_value_heads=2, head_dim=16)
    depth_shape.update(depth or {})
    decoder = CsmDepthDecoderConfig(num_codebooks=n_codebooks, vocab_size=vocab,
                                    backbone_hidden_size=backbone_shape["hidden_size"],
                                    **depth_shape)
    config = CsmConfig(
        num_codebooks=n_codebooks, vocab_size=vocab, text_vocab_size=len(tokenizer),
        codebook_pad_token_id=vocab - 1, codebook_eos_token_id=0,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        audio_token_id=tokenizer.pad_token_id, audio_eos_token_id=tokenizer.eos_token_id,
        depth_decoder_config=decoder.to_dict(),
        codec_config=tiny_mimi(n_codebooks, codebook_size).to_dict(), **backbone_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CsmForConditionalGeneration(config)
        with torch.no_grad():  # Mimi's codebooks start at zero: every code would sound alike
            for module in model.codec_model.modules():
                if isinstance(getattr(module, "embed_sum", None), torch.Tensor):
                    module.embed_sum.normal_()
    model.save_pretrained(str(model_dir))
