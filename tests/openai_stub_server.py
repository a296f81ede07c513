"""A tiny OpenAI-compatible chat server answering from a real local Hugging Face model (for tests).

``POST /v1/chat/completions`` with ``model``, ``messages``, ``max_tokens``, ``temperature``, ``logprobs``,
``top_logprobs`` and vLLM's ``guided_choice`` extension (the answer is the choice the model finds most probable).
Without ``guided_choice`` the model decodes greedily. ``GET /v1/models`` lists the model.
It checks ``Authorization: Bearer <key>`` (401 otherwise), can answer HTTP 500 to the first ``fail_first``
requests (to exercise client retries), and counts requests. Self-contained on purpose: it shares no code with
the judge client it tests.

    python tests/openai_stub_server.py MODEL_DIR --port 8000 --api-key KEY
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubOpenAIServer:
    """``with StubOpenAIServer(model_dir, api_key="k", fail_first=1) as srv: srv.base_url ...``"""

    def __init__(
        self, model_dir: str, *, api_key: str, fail_first: int = 0, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.model_name = str(model_dir)
        self.api_key = api_key
        self.fail_first = fail_first
        self.requests: list[dict[str, Any]] = []  # {"path", "status"} per request
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.base_url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- lifecycle --
    def __enter__(self) -> StubOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, path: str = "/v1/chat/completions") -> int:
        return sum(1 for r in self.requests if r["path"] == path)

    # -- the model --
    def _context_ids(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return tok(text)["input_ids"]

    def _sequence_logprob(self, ids: list[int], cont: list[int]) -> float:
        torch = self.torch
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids + cont])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        return float(sum(logp[len(ids) - 1 + i, t] for i, t in enumerate(cont)))

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        torch = self.torch
        ids = self._context_ids(body["messages"])
        max_tokens = int(body.get("max_tokens") or 16)
        top_n = int(body.get("top_logprobs") or 0)
        choices = body.get("guided_choice")
        with self._lock:
            if choices:
                scores = [
                    self._sequence_logprob(ids, self.tokenizer(c, add_special_tokens=False)["input_ids"])
                    for c in choices
                ]
                z = torch.logsumexp(torch.tensor(scores), 0).item()
                best = max(range(len(choices)), key=lambda i: scores[i])
                text, finish = choices[best], "stop"
                top = sorted(
                    ({"token": c, "logprob": s - z} for c, s in zip(choices, scores, strict=True)),
                    key=lambda d: -d["logprob"],
                )[: max(top_n, 1)]
                first = {"token": text, "logprob": scores[best] - z, "top_logprobs": top}
            else:
                with torch.inference_mode():
                    out = self.model.generate(
                        input_ids=torch.tensor([ids]),
                        max_new_tokens=max_tokens,
                        do_sample=False,
                        output_scores=True,
                        return_dict_in_generate=True,
                        pad_token_id=self.tokenizer.pad_token_id,
                    )
                new = out.sequences[0, len(ids) :].tolist()
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                finish = "length" if len(new) >= max_tokens else "stop"
                logp = torch.log_softmax(out.scores[0][0].float(), dim=-1)
                vals, idx = logp.topk(max(top_n, 1))
                top = [
                    {"token": self.tokenizer.decode([i]), "logprob": float(v)}
                    for v, i in zip(vals.tolist(), idx.tolist(), strict=True)
                ]
                first = {"token": self.tokenizer.decode(new[:1]), "logprob": float(logp[new[0]]), "top_logprobs": top}
        logprobs = {"content": [first]} if body.get("logprobs") else None
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model_name),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": logprobs,
                }
            ],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
        }

    # -- HTTP --
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                server.requests.append({"path": self.path, "status": status})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                return False

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if not self._authorised():
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with server._lock:
                    fail = server.fail_first > 0
                    if fail:
                        server.fail_first -= 1
                if fail:
                    self._send(500, {"error": {"message": "injected failure", "type": "server_error"}})
                    return
                try:
                    body = json.loads(raw)
                    payload = server.complete(body)
                except (KeyError, ValueError, TypeError) as exc:
                    self._send(400, {"error": {"message": f"bad request: {exc}"}})
                    return
                self._send(200, payload)

        return Handler


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", required=True)
    args = ap.parse_args()
    with StubOpenAIServer(args.model_dir, api_key=args.api_key, port=args.port) as srv:
        print(f"serving {args.model_dir} at {srv.base_url}", flush=True)
        threading.Event().wait()
