"""Naturalness: DNSMOS (the ONNX models shipped by ``speechmos``), the DLPO paper's reward.

score = (overall MOS - 1) / 4 clipped to [0, 1]; details carry ovrl, sig, bak and p808.
speechmos scores one clip at a time; here the 9-s windows of every clip in a batch go
through each ONNX model in one run, with speechmos's own feature and calibration code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlaif.constants import SAMPLE_RATE
from rlaif.rewards.protocol import Limits
from rlaif.rewards.scoring import ScoreInput, ScoreResult

WINDOW_SECONDS = 9.01  # DNSMOS's input length
PRIMARY = "sig_bak_ovr.onnx"
P808 = "model_v8.onnx"
CPU_ONNX_BATCH = 4
GPU_ONNX_BATCH = 64
# A clip of s > 9 seconds is s - 8 windows of 9 s: work grows ninefold per second of audio
# past one window, so a mos request carries half the audio of other kinds' (64 clips of 7.5 s).
LIMITS = Limits(max_request_audio_seconds=480.0)


def model_files(model_dir: Path) -> tuple[Path, Path]:
    """The two ONNX files, in DIR or in DIR/dnsmos_models (the speechmos package layout)."""
    for folder in (model_dir, model_dir / "dnsmos_models"):
        if (folder / PRIMARY).is_file() and (folder / P808).is_file():
            return folder / PRIMARY, folder / P808
    raise FileNotFoundError(f"{model_dir}: no {PRIMARY} and {P808} (DNSMOS ONNX models)")


def windows(audio: np.ndarray) -> list[np.ndarray]:
    """DNSMOS's 9.01-s windows at 1-s hops (as speechmos). A short clip is tiled to fill one
    window; speechmos doubles it instead, which turns a 3-s clip into five windows of the
    same content: five times the work for figures within about 0.2 MOS of its own."""
    size = int(WINDOW_SECONDS * SAMPLE_RATE)
    if len(audio) < size:
        return [np.resize(audio, size)]
    hops = int(np.floor(len(audio) / SAMPLE_RATE) - WINDOW_SECONDS) + 1
    return [audio[i * SAMPLE_RATE: i * SAMPLE_RATE + size] for i in range(max(1, hops))]


class MosScorer:
    def __init__(self, model_dir: Path, device: str):
        self.model_dir = model_dir
        self.device = device
        self.onnx_batch = CPU_ONNX_BATCH if device == "cpu" else GPU_ONNX_BATCH

    def load(self) -> None:
        import onnxruntime as ort
        from speechmos.dnsmos import DNSMOS

        primary, p808 = model_files(self.model_dir)
        self.dnsmos = DNSMOS(str(primary), str(p808))
        if self.device == "cuda":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            self.dnsmos.onnx_sess = ort.InferenceSession(str(primary), providers=providers)
            self.dnsmos.p808_onnx_sess = ort.InferenceSession(str(p808), providers=providers)

    def warm_up(self) -> None:
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        self.score_batch([ScoreInput("warm-up", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(
            np.float32))])

    def _run(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        """One ONNX run per ``onnx_batch`` windows: on CPU small runs beat one huge one."""
        return np.concatenate([session.run(None, {"input_1": inputs[i:i + self.onnx_batch]})[0]
                               for i in range(0, len(inputs), self.onnx_batch)])

    def check(self, item: ScoreInput) -> str | None:
        return None

    def score_batch(self, items: list[ScoreInput]) -> list[ScoreResult]:
        per_clip = [windows(item.audio) for item in items]
        segs = np.stack([w for ws in per_clip for w in ws]).astype(np.float32)
        mels = np.stack([self.dnsmos.audio_melspec(audio=s[:-160]) for s in segs]).astype(
            np.float32)
        raw = self._run(self.dnsmos.onnx_sess, segs)
        p808 = self._run(self.dnsmos.p808_onnx_sess, mels)[:, 0]
        sig, bak, ovrl = self.dnsmos.get_polyfit_val(raw[:, 0], raw[:, 1], raw[:, 2], False)
        results, start = [], 0
        for ws in per_clip:
            part = slice(start, start + len(ws))
            start += len(ws)
            mos = {"ovrl": float(np.mean(ovrl[part])), "sig": float(np.mean(sig[part])),
                   "bak": float(np.mean(bak[part])), "p808": float(np.mean(p808[part]))}
            results.append(ScoreResult.clipped((mos["ovrl"] - 1) / 4, mos))
        return results
