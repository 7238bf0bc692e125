"""A real local webhook receiver for tests and benches: a threading `http.server` on a free
loopback port that records every request (headers, body, arrival time) and answers with the
status it is told to (`answer`), or is closed (`close`, then `open` on the same port: a receiver
that is down). It dedups nothing: the tests count what arrived per `webhook-id`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    status: int
    at: float  # time.time() when it arrived


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answer = 200
        self.delay = 0.0  # seconds before answering (a slow receiver)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.open()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/lorafleet"

    def open(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status = receiver.answer
                time.sleep(receiver.delay)
                with receiver._lock:
                    receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()},
                                                      body, status, time.time()))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("location", receiver.url + "/moved")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self) -> dict[str, list[Received]]:
        """The requests answered 2xx, by `webhook-id`."""
        with self._lock:
            out: dict[str, list[Received]] = {}
            for r in self.received:
                if 200 <= r.status < 300:
                    out.setdefault(r.headers["webhook-id"], []).append(r)
            return out
