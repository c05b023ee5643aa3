"""Scripted model servers for the real agent CLIs: the Responses API (codex) and the Messages API (claude).

Each server listens on 127.0.0.1 only, records every request (peer address,
method, path, JSON body) and answers a model turn without any model: when the
conversation holds no tool result yet, it asks the CLI to run ONE shell command
(``command_for(prompt)``: the command is derived from the prompt, so each issue
gets its own edit); once a tool result is there, it ends with a final message.
``think`` seconds of delay per turn stand in for the model's time. The first
``fail_first`` model requests are answered with ``fail_status`` (429 by default)
and a ``retry-after`` header: a rate limit, or with ``quota=True`` the body of an
exhausted usage quota.

Budgets and quotas (issue 21): ``loop=True`` never ends a conversation (every turn
asks for one more command: a runaway agent); ``refuse_login`` answers 429 to every
request made with that credential (its API key) until ``refuse_until`` (epoch
seconds), with the reset time in the body and in ``retry-after``, and serves every
other credential. Each record names the credential it came with (``login``).

Standard library only; the shapes are the ones the CLIs were seen to use
(as seen with Codex CLI 0.171.0 and Claude Code 2.1.197). Used by the real-CLI tests
and by ``inv bench --scenarios agents``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

USAGE_IN, USAGE_OUT = 1200, 34  # tokens each turn reports


def default_command(prompt: str) -> str:
    number = re.search(r"issue #(\d+)", prompt)
    n = number.group(1) if number else "x"
    return f"echo 'resolved by the scripted model' > resolved-{n}.txt"


@dataclass
class Seen:
    peer: str
    method: str
    path: str
    body: dict | None
    status: int
    at: float
    login: str = ""  # the credential the request came with (its API key)


@dataclass
class ScriptedServer:
    """Base: the HTTP plumbing, the record, the failure schedule."""

    command_for: Callable[[str], str] = default_command
    think: float = 0.0
    fail_first: int = 0
    fail_status: int = 429
    retry_after: float = 1
    quota: bool = False
    loop: bool = False
    refuse_login: str | None = None
    refuse_until: float = 0.0
    seen: list = field(default_factory=list)
    port: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()
        self._failures = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what tests read ---------------------------------------------------
    def model_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST" and s.body is not None]

    def peers(self) -> set[str]:
        return {s.peer for s in self.seen}

    def prompts(self) -> str:
        """Every text the CLIs sent, joined: to look for the issue's title and body."""
        return "\n".join(json.dumps(s.body) for s in self.model_requests())

    def failures(self) -> int:
        return self._failures

    # -- the protocol (subclasses) ----------------------------------------
    def is_model_request(self, path: str) -> bool:
        raise NotImplementedError

    def answer(self, body: dict) -> tuple[list[tuple[str, dict]], dict | None]:
        """(SSE events, or None and a JSON body for a non-streaming request)."""
        raise NotImplementedError

    def error_body(self) -> dict:
        raise NotImplementedError

    # -- plumbing ----------------------------------------------------------
    def _take_failure(self) -> bool:
        with self._lock:
            if self._failures < self.fail_first:
                self._failures += 1
                return True
            return False

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _record(self, body, status):
                auth = self.headers.get("authorization") or self.headers.get("x-api-key") or ""
                login = auth.split(" ", 1)[-1].strip()
                with server._lock:
                    server.seen.append(Seen(self.client_address[0], self.command, self.path, body, status,
                                            time.time(), login))

            def _send(self, status, payload: bytes, ctype="application/json", headers=None):
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_HEAD(self):
                self._record(None, 200)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self):
                self._record(None, 404)
                self._send(404, b'{"error": "not scripted"}')

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"raw": raw.decode(errors="replace")}
                if not server.is_model_request(self.path):
                    self._record(body, 404)
                    self._send(404, b'{"error": "not scripted"}')
                    return
                auth = self.headers.get("authorization") or self.headers.get("x-api-key") or ""
                wait = server.refuse_until - time.time()
                if server.refuse_login and auth.split(" ", 1)[-1].strip() == server.refuse_login and wait > 0:
                    self._record(body, 429)
                    message = (f"Rate limit reached for this login. Please try again in {wait:.0f}s "
                               f"(resets at {time.strftime('%H:%M:%S', time.gmtime(server.refuse_until))} UTC).")
                    self._send(429, json.dumps({"error": {"type": "rate_limit_exceeded", "code": "rate_limit_exceeded",
                                                          "message": message}}).encode(),
                               headers={"retry-after": f"{max(wait, 1):.0f}"})
                    return
                if server._take_failure():
                    self._record(body, server.fail_status)
                    self._send(server.fail_status, json.dumps(server.error_body()).encode(),
                               headers={"retry-after": f"{server.retry_after:g}"})
                    return
                if server.think:
                    time.sleep(server.think)
                self._record(body, 200)
                events, plain = server.answer(body)
                if plain is not None:
                    self._send(200, json.dumps(plain).encode())
                    return
                payload = b"".join(
                    f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)
                self._send(200, payload, ctype="text/event-stream", headers={"cache-control": "no-cache"})

        return Handler


class ResponsesServer(ScriptedServer):
    """OpenAI Responses API (``POST /v1/responses``, stream) as codex uses it."""

    def is_model_request(self, path: str) -> bool:
        return path.split("?")[0].rstrip("/").endswith("/responses")

    def error_body(self) -> dict:
        if self.quota:
            return {"error": {"type": "insufficient_quota", "code": "insufficient_quota",
                              "message": "You exceeded your current quota, please check your plan and billing details."}}
        return {"error": {"type": "rate_limit_exceeded", "code": "rate_limit_exceeded",
                          "message": f"Rate limit reached. Please try again in {self.retry_after:g}s."}}

    def answer(self, body: dict):
        items = body.get("input") or []
        done = not self.loop and any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in items)
        n = len(self.model_requests())
        if done:
            item = {"type": "message", "role": "assistant", "id": f"msg_{n}",
                    "content": [{"type": "output_text", "text": "Done: the file is written."}]}
        else:
            prompt = json.dumps(items)
            item = {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": "exec_command",
                    "arguments": json.dumps({"cmd": self.command_for(prompt)})}
        usage = {"input_tokens": USAGE_IN, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": USAGE_OUT, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": USAGE_IN + USAGE_OUT}
        response = {"id": f"resp_{n}", "object": "response", "status": "completed", "output": [item],
                    "usage": usage}
        return [("response.created", {"type": "response.created", "response": {**response, "status": "in_progress",
                                                                                "output": []}}),
                ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                               "item": item}),
                ("response.completed", {"type": "response.completed", "response": response})], None


class MessagesServer(ScriptedServer):
    """Anthropic Messages API (``POST /v1/messages``, stream) as Claude Code uses it."""

    def is_model_request(self, path: str) -> bool:
        return path.split("?")[0].rstrip("/").endswith("/v1/messages")

    def error_body(self) -> dict:
        if self.quota:
            return {"type": "error", "error": {"type": "rate_limit_error",
                                               "message": "You have exceeded your usage quota."}}
        return {"type": "error", "error": {"type": "rate_limit_error",
                                           "message": "Number of requests has exceeded your rate limit."}}

    def answer(self, body: dict):
        messages = body.get("messages") or []
        done = not self.loop and any(isinstance(block, dict) and block.get("type") == "tool_result"
                                     for m in messages if isinstance(m.get("content"), list) for block in m["content"])
        n = len(self.model_requests())
        model = body.get("model", "claude-scripted")
        usage = {"input_tokens": USAGE_IN, "output_tokens": USAGE_OUT,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if done:
            block = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": "Done: the file is written."}
            stop = "end_turn"
            full = {"type": "text", "text": delta["text"]}
        else:
            command = self.command_for(json.dumps(messages))
            block = {"type": "tool_use", "id": f"toolu_{n}", "name": "Bash", "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps({"command": command})}
            stop = "tool_use"
            full = {**block, "input": {"command": command}}
        if not body.get("stream"):
            return [], {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": model,
                        "content": [full], "stop_reason": stop, "stop_sequence": None, "usage": usage}
        message = {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
        return [("message_start", {"type": "message_start", "message": message}),
                ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                   "usage": {"output_tokens": USAGE_OUT}}),
                ("message_stop", {"type": "message_stop"})], None
