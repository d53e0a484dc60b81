"""A real HTTP file server on 127.0.0.1 for the mirror tests and benchmark.

Serves one folder with HTTP Range support (what nginx or any static server does), counts the
body bytes it sent, and can misbehave on purpose: ``cut_at`` closes the connection after that
many bytes of the *first* full response of a file (a dropped link), ``corrupt`` flips one byte
of every file body but the manifest's (a bad disk or proxy). Run as a script it serves until killed and
prints ``port N`` first (the benchmark uses it in its own process so it does not share a GIL
with the client being measured).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-$")


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path, cut_at: int | None = None, corrupt: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.folder = folder
        self.cut_at = cut_at
        self.corrupt = corrupt
        self.bytes_sent = 0
        self.cuts_done = 0
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FileServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join(5)


class Handler(BaseHTTPRequestHandler):
    server: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        name = self.path.lstrip("/")
        path = (self.server.folder / name).resolve()
        with self.server.lock:
            self.server.requests.append(f"{self.path} {self.headers.get('Range', '')}")
        if self.server.folder.resolve() not in path.parents or not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        start = 0
        match = _RANGE.match(self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            if start >= size:
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        limit = size - start
        with self.server.lock:
            first = self.server.cuts_done == 0 and start == 0 and not name.endswith(".json")
            if self.server.cut_at is not None and first:
                limit = min(limit, self.server.cut_at)
                self.server.cuts_done += 1
        self._send_body(path, start, limit, corrupt=self.server.corrupt and not name.endswith(".json"))
        if limit < size - start:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_body(self, path: Path, start: int, limit: int, corrupt: bool) -> None:
        self.wfile.flush()
        with path.open("rb") as handle:
            if corrupt:
                data = bytearray(handle.read())[start:start + limit]
                if data:
                    data[len(data) // 2] ^= 0xFF
                self.wfile.write(bytes(data))
                sent = len(data)
            else:
                sent = 0
                while sent < limit:
                    count = os.sendfile(self.connection.fileno(), handle.fileno(), start + sent, limit - sent)
                    if count == 0:
                        break
                    sent += count
        with self.server.lock:
            self.server.bytes_sent += sent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cut-at", type=int, default=None)
    args = parser.parse_args()
    server = FileServer(args.folder, cut_at=args.cut_at)
    print(f"port {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        print(f"bytes_sent {server.bytes_sent}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
