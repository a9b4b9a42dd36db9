"""Chat backends for the labeller: an OpenAI-compatible endpoint, or a local transformers LM.

Both take a list of chat messages and return the assistant's text. Transport problems are
the endpoint client's business (retries with backoff); whether the text is a valid answer
is the labeller's.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
"""Chat messages; a content may be a string or a list of parts (text, input_audio)."""

# Statuses worth retrying besides every 5xx (the OpenAI SDK's choice): timeouts, conflicts
# and rate limits.
RETRY_STATUSES = frozenset({408, 409, 429})
# Statuses no request of this run can get past: stop instead of failing every sentence.
FATAL_STATUSES = {401: "unauthorised: check the API key variable",
                  403: "forbidden: the key may not use this model",
                  404: "not found: check --endpoint (base URL, e.g. .../v1) and --model"}
# Never sleep longer than this for one Retry-After, whatever the server asks; waits past
# LONG_WAIT_S are logged (and shown by the progress bar through ``on_wait``).
MAX_RETRY_AFTER_S = 600.0
LONG_WAIT_S = 30.0
# A chat completion of a few labels is a few kB; a larger response is refused unread.
MAX_RESPONSE_BYTES = 1 << 20
# Only this much of an answer is parsed: label answers are short, and parsing stays cheap.
MAX_ANSWER_CHARS = 8000


class ChatClient(Protocol):
    async def complete(self, messages: Messages) -> str: ...

    async def aclose(self) -> None: ...


class EndpointUnusable(RuntimeError):
    """No request can succeed (bad key, unknown model, endpoint down): stop the run."""


class EndpointError(RuntimeError):
    """This request failed after every retry; a rerun tries the sentence again."""


class RequestRejected(ValueError):
    """The endpoint refused this request for good (e.g. 400): recorded unlabelled."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After wins when it gives one."""

    retries: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_retry_after_s: float = MAX_RETRY_AFTER_S

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class OpenAIChat:
    """``POST {endpoint}/chat/completions``, as served by OpenAI, vLLM and compatible servers.

    A 429's Retry-After pauses every request of this client, not just the one that got it,
    so concurrent workers do not keep hitting a rate-limited endpoint.
    """

    def __init__(self, endpoint: str, model: str, api_key: str | None, *,
                 timeout_s: float = 60.0, policy: RetryPolicy | None = None,
                 max_tokens: int = 200,
                 on_wait: Callable[[float], None] = lambda seconds: None) -> None:
        base = endpoint.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.max_tokens = model, max_tokens
        self.policy = policy or RetryPolicy()
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._paused_until = 0.0
        self.on_wait = on_wait

    async def complete(self, messages: Messages,
                       response_format: dict[str, Any] | None = None) -> str:
        """The answer's text; ``response_format`` constrains it (e.g. a JSON schema)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0,
                                "max_tokens": self.max_tokens}
        if response_format is not None:
            body["response_format"] = response_format
        problem = ""
        for attempt in range(self.policy.retries + 1):
            await self._wait_for_pause()
            try:
                return await self._post(body)
            except _Retry as exc:
                problem, delay = str(exc), self.policy.delay(attempt, exc.retry_after)
                if exc.retry_after is not None:  # pause every worker, not just this one
                    self._pause(exc.retry_after, delay)
                    delay = 0.0
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                delay = self.policy.delay(attempt)
            log.debug("attempt %d of %d failed: %s", attempt + 1, self.policy.retries + 1, problem)
            if attempt < self.policy.retries:
                await asyncio.sleep(delay)
        raise EndpointError(f"{self.url}: {problem} (after {self.policy.retries + 1} attempts)")

    def _pause(self, asked: float, delay: float) -> None:
        """Pause every request until ``delay`` from now; long waits are said out loud."""
        until = time.monotonic() + delay
        if until <= self._paused_until:
            return
        self._paused_until = until
        if delay >= LONG_WAIT_S:
            capped = f" (asked {asked:.0f} s, capped)" if asked > delay else ""
            log.warning("%s: rate limited, every request waits %.0f s%s", self.url, delay, capped)
            self.on_wait(delay)

    async def _wait_for_pause(self) -> None:
        while (left := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(left)

    async def _post(self, body: dict[str, Any]) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        async with self._session.post(self.url, json=body) as resp:
            text = await _read_text(resp, self.url)
            if resp.status in FATAL_STATUSES:
                raise EndpointUnusable(f"{self.url}: HTTP {resp.status} "
                                       f"{FATAL_STATUSES[resp.status]} ({text[:200]})")
            if resp.status in RETRY_STATUSES or resp.status >= 500:
                raise _Retry(f"HTTP {resp.status}: {text[:200]}",
                             retry_after_seconds(resp.headers.get("Retry-After")))
            if resp.status >= 400:
                raise RequestRejected(f"{self.url} rejected the request: HTTP {resp.status}: "
                                      f"{text[:200]}")
            return _message_content(text)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Retry(Exception):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


async def _read_text(resp: aiohttp.ClientResponse, url: str) -> str:
    """The body as text, at most MAX_RESPONSE_BYTES (refused unread past it, retried when it
    is not UTF-8: one bad response must not stop the run)."""
    if (resp.content_length or 0) > MAX_RESPONSE_BYTES:
        raise RequestRejected(f"{url}: response of {resp.content_length} bytes exceeds the "
                              f"limit of {MAX_RESPONSE_BYTES}")
    data = await resp.content.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise RequestRejected(f"{url}: response exceeds the limit of {MAX_RESPONSE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Retry(f"HTTP {resp.status}: response is not UTF-8 ({exc.reason} at byte "
                     f"{exc.start})", None) from None


def _message_content(text: str) -> str:
    """``choices[0].message.content`` of a chat-completions response, at most
    MAX_ANSWER_CHARS of it."""
    try:
        content = json.loads(text)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        raise _Retry(f"response is not a chat completion: {text[:200]!r}", None) from None
    return content[:MAX_ANSWER_CHARS] if isinstance(content, str) else ""


class LocalChat:
    """A transformers causal LM from a local directory, greedy decoding, one call at a time.

    For offline runs and tests; generation runs in a worker thread so the event loop (and
    the output writer) stays responsive.
    """

    def __init__(self, model_dir: Path, *, max_new_tokens: int = 128) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise EndpointUnusable(f"--local-model needs torch and transformers ({exc}); "
                                   f"pip install 'rlaif-operator[trainer]'") from None
        if not model_dir.is_dir():
            raise EndpointUnusable(f"--local-model: directory {str(model_dir)!r} does not exist")
        self._torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]  # transformers' stub
        self.max_new_tokens = max_new_tokens
        self._lock = asyncio.Lock()

    async def complete(self, messages: Messages) -> str:
        async with self._lock:
            return await asyncio.to_thread(self._generate, messages)

    def _generate(self, messages: Messages) -> str:
        tok = self.tokenizer
        if tok.chat_template:
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"
        inputs = tok(prompt, return_tensors="pt").to(self.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with self._torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, pad_token_id=pad)
        return str(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

    async def aclose(self) -> None:
        return None
