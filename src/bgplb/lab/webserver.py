"""The lab's built-in web server: answers every GET with "Welcome to nginx <i> !".

Used by `bgplb demo` and `bgplb lab` on servers where nginx is not installed. HTTP/1.1 with
keep-alive (so the drain scenario can hold long-lived connections), dual-stack on one port:

    python -m bgplb.lab.webserver --index 1 [--port 80]

It runs in the foreground until SIGTERM/SIGINT. Standard library only.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


def welcome(index: int) -> bytes:
    """The body every lab web server answers with (nginx gets the same text)."""
    return f"Welcome to nginx {index} !\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bgplb-lab"
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 128

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def make_server(index: int, port: int = 80) -> ThreadingHTTPServer:
    """A bound server (IPv4 and IPv6 on `port`); call `serve_forever()` / `shutdown()`."""
    handler = type("Handler", (_Handler,), {"body": welcome(index)})
    return _DualStackServer(("::", port), handler)


def serve(index: int, port: int = 80) -> None:
    """Serve until SIGTERM/SIGINT."""
    server = make_server(index, port)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bgplb.lab.webserver")
    parser.add_argument("--index", type=int, required=True, help="the <i> in the answer")
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)
    serve(args.index, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
