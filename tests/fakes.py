"""Local stand-ins for outside providers, speaking their protocol over real HTTP."""

import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ReceivedCall:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records POSTs and answers with scripted statuses."""

    secret: str = "test-secret"
    statuses: list[int] = field(default_factory=list)
    calls: list[ReceivedCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                receiver.calls.append(
                    ReceivedCall(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                reply = json.dumps({"id": f"msg-{len(receiver.calls)}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def start(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def signature_valid(self, call: ReceivedCall) -> bool:
        timestamp = call.headers["x-scrm-timestamp"]
        expected = hmac.new(
            self.secret.encode(), timestamp.encode() + b"." + call.body, hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(call.headers["x-scrm-signature"], "sha256=" + expected)
