"""Helpers for the reward tests: real espeak-ng speech and real servers on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
from aiohttp import web

from rlaif.audio import resample
from rlaif.rewards.scoring import Scorer
from rlaif.rewards.server import RewardApp, ServerSettings, build_scorer

SENTENCE = "The committee approved the new budget after a long debate."


def speak(text: str, rate: int = 150, pitch: int = 50, ssml: bool = False) -> np.ndarray:
    """espeak-ng speech (22.05 kHz) resampled to 16 kHz float32."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        args = ["espeak-ng", "-w", str(wav), "-s", str(rate), "-p", str(pitch)]
        subprocess.run([*args, *(["-m"] if ssml else []), text], check=True)
        audio, sr = sf.read(wav, dtype="float32")
    return resample(audio, sr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post(url: str, body: bytes) -> tuple[int, dict]:
    """POST /v1/score; (status, JSON answer) for errors too."""
    req = urllib.request.Request(url + "/v1/score", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if get_json(url + "/readyz")[0] == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


class ServerThread:
    """A real reward server (the same app as ``rlaif reward serve``) in a background loop."""

    def __init__(self, settings: ServerSettings, port: int | None = None,
                 scorer: Scorer | None = None):
        self.settings = settings
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = RewardApp(scorer or build_scorer(settings), settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self, wait: bool = True) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        if wait:
            wait_ready(self.url)
        return self

    async def _start(self) -> None:
        self._runner = self.state.make_runner()
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def metric(self, name: str) -> float:
        """A sample's value from /metrics (e.g. ``rlaif_reward_batch_size_sum``)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


@contextlib.contextmanager
def running_server(settings: ServerSettings, port: int | None = None,
                   scorer: Scorer | None = None) -> Iterator[ServerThread]:
    """A real server for ``settings`` (serving ``scorer`` instead of the kind's own one: a
    test's deliberately simple reward)."""
    server = ServerThread(settings, port, scorer).start()
    try:
        yield server
    finally:
        server.stop()


def build_tiny_qwen2_audio(out: Path) -> Path:
    """A random Qwen2-Audio with a small byte-level BPE tokenizer, saved like a real one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    from rlaif.api.labels import LabelSchema
    from rlaif.rewards.judge import judge_prompt

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>",
                "<|audio_eos|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [judge_prompt(LabelSchema()), '{"Structure": "Question", "Tone": "Interrogative"}']
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128),
                                    tokenizer=tokenizer)
    vocab = tok.get_vocab_size()
    audio_token = tok.token_to_id("<|AUDIO|>")
    assert audio_token is not None  # one of the special tokens trained above
    config = Qwen2AudioConfig(
        audio_config={"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2,
                      "encoder_ffn_dim": 32, "num_mel_bins": 128},
        text_config={"model_type": "qwen2", "vocab_size": vocab, "hidden_size": 16,
                     "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1,
                     "eos_token_id": tok.token_to_id("<|im_end|>"),
                     "pad_token_id": tok.token_to_id("<|endoftext|>")},
        audio_token_index=audio_token)
    Qwen2AudioForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_tiny_wavlm(out: Path) -> Path:
    """A random WavLMForXVector from a small config, saved like a real checkpoint."""
    from transformers import WavLMConfig, WavLMForXVector

    config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(32, 32, 32), conv_stride=(5, 4, 4),
                         conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, tdnn_dim=(32, 32, 64),
                         tdnn_kernel=(5, 3, 1), tdnn_dilation=(1, 2, 1), xvector_output_dim=16)
    WavLMForXVector(config).save_pretrained(out)
    return out
