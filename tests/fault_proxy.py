"""A small HTTP proxy on 127.0.0.1 that injects faults in front of a real OpenAI-compatible server.

Each POST takes the next action from a script (then `then` for every later one): "pass" forwards the
request, "400" / "429" / "500" answer that status, "401" rejects the key, "stall" holds the connection open for
`stall_s` seconds without answering, "garbage" answers 200 with a body that is not JSON, "badjson" answers 200 with
`application/json` that does not parse. GETs are forwarded.

"logprobs" forwards and adds OpenAI-shaped log-probabilities of the first reply token (`logprobs`, a dict
token -> logprob) to every choice: a stand-in for what OpenAI's endpoints return and `transformers serve` does
not. "badlogprobs" forwards and adds malformed ones (a string where a number belongs).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultProxy:
    def __init__(self, upstream_root: str, script: Iterable[str] = (), then: str = "pass", stall_s: float = 5.0,
                 logprobs: dict[str, float] | None = None):
        self.upstream = upstream_root.rstrip("/")
        self.logprobs = logprobs or {"1": -0.2, "2": -1.8, "Answer": -3.0}
        self.script = list(script)
        self.then = then
        self.stall_s = stall_s
        self.seen: Counter = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                proxy._forward(self, None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    action = proxy.script.pop(0) if proxy.script else proxy.then
                    proxy.seen[action] += 1
                try:
                    proxy._act(self, action, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a stall outlasting its timeout)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _send(self, handler, status: int, body: bytes, content_type: str = "application/json", headers=()):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    def _act(self, handler, action: str, body: bytes) -> None:
        if action == "pass":
            self._forward(handler, body)
        elif action == "429":
            self._send(handler, 429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                       headers=[("Retry-After", "0")])
        elif action == "401":  # like OpenAI, echo (part of) the key back in the message
            key = handler.headers.get("Authorization", "").removeprefix("Bearer ")
            self._send(handler, 401, json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}}).encode())
        elif action == "400":  # what some servers answer to a request field they do not support
            self._send(handler, 400, b'{"error": {"message": "logprobs is not supported", "type": "invalid_request"}}')
        elif action == "500":
            self._send(handler, 500, b'{"error": {"message": "boom", "type": "server_error"}}')
        elif action == "stall":
            time.sleep(self.stall_s)
            self._send(handler, 504, b"{}")
        elif action == "garbage":
            self._send(handler, 200, b"<html>upstream exploded</html>", "text/html")
        elif action == "badjson":
            self._send(handler, 200, b'{"choices": [{"text": "unterminated')
        elif action in ("logprobs", "badlogprobs"):
            self._forward(handler, body, self._add_logprobs if action == "logprobs" else self._add_bad_logprobs)
        else:
            raise ValueError(action)

    def _add_logprobs(self, path: str, reply: dict, values: dict | None = None) -> dict:
        values = values or self.logprobs
        for choice in reply.get("choices", []):
            if "chat" in path:
                tops = [{"token": t, "logprob": v, "bytes": None} for t, v in values.items()]
                first = tops[0]
                choice["logprobs"] = {"content": [{**first, "top_logprobs": tops}]}
            else:
                choice["logprobs"] = {"tokens": [next(iter(values))], "token_logprobs": [next(iter(values.values()))],
                                      "top_logprobs": [dict(values)], "text_offset": [0]}
        return reply

    def _add_bad_logprobs(self, path: str, reply: dict) -> dict:
        return self._add_logprobs(path, reply, {"1": "not a number", "2": -1.0})

    def _forward(self, handler, body: bytes | None, rewrite=None) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() in ("content-type", "authorization")}
        request = urllib.request.Request(self.upstream + handler.path, data=body, headers=headers,
                                         method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=600) as r:
                status, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as e:
            status, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "application/json")
        if rewrite is not None and status == 200:
            data = json.dumps(rewrite(handler.path, json.loads(data))).encode()
        self._send(handler, status, data, ctype)
