"""`rlaif label --local-model DIR` with a tiny random Llama saved and loaded the real way.

Its answers are garbage by construction: the point is that the real loading and generation
path runs end to end and that garbage ends up as unlabelled records with reasons, never as
made-up labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlaif.api.labels import LabelSchema
from rlaif.cli import main
from rlaif.data import PromptFileError, load_prompts
from rlaif.labeling.labeler import SYSTEM_PROMPT


def build_tiny_llama(directory: Path) -> Path:
    """A byte-level BPE trained on the labelling prompt and a 2-layer Llama from a config."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([SYSTEM_PROMPT, LabelSchema().describe()], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        pad_token="</s>")
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def test_garbage_answers_of_a_local_model_become_unlabelled_records(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = build_tiny_llama(tmp_path / "tiny-llama")
    source, out = tmp_path / "texts.jsonl", tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"text": "Good morning. How are you?"}) + "\n")

    rc = main(["label", "--in", str(source), "--out", str(out), "--local-model", str(model_dir),
               "--retries", "1"])

    assert rc == 1  # nothing usable was produced, and the command says so
    assert "holds no labelled sentence" in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["text"] for r in records) == ["Good morning.", "How are you?"]
    for record in records:
        assert record["labels"] is None
        assert record["error"].startswith("invalid answer (2 attempts): ")
    with pytest.raises(PromptFileError, match="no labelled prompts"):
        load_prompts(out)
