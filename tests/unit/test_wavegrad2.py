"""WaveGrad 2: espeak-ng front end and durations, config, corpus, pre-training, model dirs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from rlaif.cli import main as cli
from rlaif.trainer import audio
from rlaif.trainer.espeak_worker import PHONEMES
from rlaif.trainer.wavegrad2 import config as presets
from rlaif.trainer.wavegrad2.config import WaveGrad2Config
from rlaif.trainer.wavegrad2.corpus import (
    CorpusError,
    durations,
    read_examples,
    read_metadata,
    write_espeak_corpus,
)
from rlaif.trainer.wavegrad2.frontend import PAUSE, START, Speech, phonemize, speak
from rlaif.trainer.wavegrad2.modeldir import WEIGHTS_FILE, load_model, save_model
from rlaif.trainer.wavegrad2.pretrain import config_for, pretrain

TEXTS = ["The cat sat on the mat.", "Open the door, please.", "We will meet again soon.",
         "She sells sea shells."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_espeak_corpus(TEXTS, tmp_path_factory.mktemp("corpus"))


def test_espeak_reports_ordered_phonemes_inside_the_audio() -> None:
    speech = speak("Open the door, please.")
    assert speech.phonemes[0] == START and PAUSE in speech.phonemes
    assert len(speech.phonemes) == len(speech.starts) > 8
    assert speech.starts == sorted(speech.starts)
    assert 0 < speech.starts[-1] <= len(speech.audio)
    assert np.abs(speech.audio).max() > 0.05  # real speech, not silence
    assert phonemize("Open the door, please.") == speech.phonemes


def test_a_text_is_spoken_the_same_whatever_was_spoken_before() -> None:
    """libespeak-ng keeps state between syntheses (in one process the same text came out
    16,707 to 16,725 samples long); every render starts from a fresh fork instead."""
    first = speak(TEXTS[0])
    again = [speak(text) for text in [TEXTS[0], TEXTS[1], TEXTS[0], "Hello there, friend!",
                                      TEXTS[0], TEXTS[0]]]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(speak, [TEXTS[2], TEXTS[0]] * 3))
    for speech in [again[0], again[2], *again[4:], *threaded[1::2]]:
        assert same(speech, first)
    assert not same(again[1], first) and all(same(s, threaded[0]) for s in threaded[::2])


def same(a: Speech, b: Speech) -> bool:
    return (a.phonemes == b.phonemes and a.starts == b.starts and a.sample_rate == b.sample_rate
            and np.array_equal(a.audio, b.audio))


@pytest.mark.parametrize("text", ["", " \n\t "])
def test_an_empty_text_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="cannot phonemise an empty text"):
        speak(text)


def test_markup_is_plain_text_and_text_that_is_not_utf8_is_refused() -> None:
    assert " ".join(phonemize("<<<>>> & <foo")) == "^ _ _ _ æ n d _ _ f uː _ _"
    idle = audio._pools[PHONEMES].idle
    workers = idle.qsize()
    with pytest.raises(UnicodeEncodeError, match="surrogates not allowed"):
        speak("lone \ud800 surrogate")
    assert idle.qsize() == workers  # refused before it could cost a worker
    assert phonemize("Hello.")[:3] == [START, "h", "ə"]  # and the next text is spoken


def test_durations_follow_espeak_timing_scaled_to_the_recording() -> None:
    frames = durations([0, 100, 300, 600], spoken_length=1000, frames=50)
    assert frames.tolist() == [5.0, 10.0, 15.0, 20.0]  # 10%, 20%, 30%, 40% of 50 frames
    speech = speak("She sells sea shells.")
    real = durations(speech.starts, len(speech.audio), frames=123)
    assert real.sum() == 123 and (real >= 0).all()


def test_corpus_examples_have_matching_frames_and_audio(corpus) -> None:
    config = config_for(corpus, presets.tiny())
    assert config.symbols[:4] == ["<pad>", "<unk>", START, PAUSE] and len(config.symbols) > 15
    examples = read_examples(corpus, config)
    assert len(examples) == len(TEXTS)
    for e in examples:
        assert len(e.audio) == int(e.durations.sum()) * config.hop_length
        assert len(e.ids) == len(e.durations) and int(e.ids.min()) >= 2  # no unknown symbols


def test_corpus_errors_name_the_file_and_line(tmp_path) -> None:
    with pytest.raises(CorpusError, match=r"metadata\.csv: missing"):
        read_metadata(tmp_path)
    (tmp_path / "metadata.csv").write_text("LJ001|Some text|Some text\n")
    with pytest.raises(CorpusError, match=r"metadata.csv:1: .*LJ001.wav does not exist"):
        read_metadata(tmp_path)


def test_config_rejects_inconsistent_sizes(tmp_path) -> None:
    with pytest.raises(ValueError, match="downsample_channels needs 3"):
        WaveGrad2Config(upsample_factors=[5, 4, 4, 2], upsample_channels=[8, 8, 8, 8],
                        downsample_channels=[8])
    bad = tmp_path / "c.yaml"
    bad.write_text("encoder_dims: 4\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown WaveGrad 2 config field.*encoder_dims"):
        WaveGrad2Config.from_file(bad)
    assert presets.paper().hop_length == 300 and presets.tiny().hop_length == 160


def test_pretraining_lowers_the_loss_and_the_model_dir_round_trips_bit_exactly(
        corpus, tmp_path) -> None:
    out = tmp_path / "model"
    model, losses = pretrain(corpus, out, presets.tiny(), steps=40, batch_size=4, seed=0)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), losses
    loaded = load_model(out)
    assert loaded.config == model.config == config_for(corpus, presets.tiny())
    trained = model.state_dict()
    assert loaded.state_dict().keys() == trained.keys()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, trained[name]), name
    save_model(loaded, tmp_path / "copy")  # and saving it again gives the same bytes
    assert (tmp_path / "copy" / WEIGHTS_FILE).read_bytes() == (out / WEIGHTS_FILE).read_bytes()


def test_pretrain_command_reports_bad_input(tmp_path, capsys) -> None:
    assert cli(["pretrain", "wavegrad2", "--data", str(tmp_path), "--out",
                str(tmp_path / "m"), "--steps", "1", "--config", "tiny"]) == 1
    assert "metadata.csv: missing" in capsys.readouterr().out
    assert cli(["pretrain", "wavegrad2", "--data", str(tmp_path), "--out",
                str(tmp_path / "m"), "--config", "nope"]) == 1
    assert "neither a preset" in capsys.readouterr().out


def test_pretrain_command_writes_a_loadable_model(corpus, tmp_path, capsys) -> None:
    out = tmp_path / "cli-model"
    assert cli(["pretrain", "wavegrad2", "--data", str(corpus), "--out", str(out),
                "--steps", "2", "--config", "tiny"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert load_model(out).config.sample_rate == 16000
