"""A real HTTP webhook receiver on loopback: it verifies every delivery's signature with
the `standardwebhooks` package, and answers from a script (e.g. 500, 500, then 200)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook


class Receiver:
    def __init__(self, secret: str, answers: list[int] | None = None, location: str | None = None, port: int = 0):
        self.webhook = Webhook(secret)
        self.answers = list(answers or [])  # the status of each request in turn; then 200
        self.location = location
        self.requests: list[dict] = []  # every request: headers, body, whether it verified, the answer
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/genq?x=1"

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def verified(self) -> list[dict]:
        """The payloads of requests that verified and were answered 2xx."""
        return [r["payload"] for r in self.requests if r["payload"] is not None and 200 <= r["status"] < 300]

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = receiver.webhook.verify(body, headers)
                except Exception as exc:  # a bad signature: recorded, answered 400
                    payload, error = None, str(exc)
                else:
                    error = None
                with receiver._lock:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    if payload is None:
                        status = 400
                    receiver.requests.append({"headers": headers, "body": body.decode(), "payload": payload,
                                              "error": error, "status": status, "path": self.path})
                self.send_response(status)
                if receiver.location and 300 <= status < 400:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args):
                pass

        return Handler


def payload_ids(receiver: Receiver) -> list[str]:
    return [r["headers"]["webhook-id"] for r in receiver.requests]


def body_of(request: dict) -> dict:
    return json.loads(request["body"])
