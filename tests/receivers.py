"""A tiny HTTP receiver on loopback recording every request: the webhook target of the alerts
(Apprise ``json://``) and the Pushgateway of the metrics tests. Real HTTP, no mock."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Answers every POST/PUT with ``status`` and records (method, path, body)."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.command, self.path, self.rfile.read(n)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def json_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(b) for m, _, b in self.requests if m == "POST" and b.startswith(b"{")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
