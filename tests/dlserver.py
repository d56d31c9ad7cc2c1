"""A loopback HTTP server that serves files well or misbehaves on purpose (download tests).

URL ``/<mode>/<name>`` serves ``FILES[name]`` with one behaviour:

good           200, or a correct 206 for a Range request
norange        ignores Range (always 200 and the whole body)
badrange       answers a Range request with 206 but starts at byte 0 (Content-Range 0-...)
shortrange     206 whose Content-Range starts right but whose total is wrong
cut            promises the whole body, sends a third, hangs up (every time)
chunkcut       chunked transfer encoding, hangs up inside a chunk (http.client.IncompleteRead)
cutonce        like ``cut`` on the first request of the path, then ``good``
nolength       no Content-Length, sends half the body, closes: a silent truncation
html           an HTML error page with status 200 and Content-Type text/html
htmlbinary     the same page served as application/octet-stream
empty          200 with an empty body
always416      416 Range Not Satisfiable (Content-Range bytes */<size>) to every Range request
slow           like ``good``, in 64 KiB pieces with a pause (so concurrent clients overlap)
404 / 500      that status

``hits`` counts requests per (mode, name, range-or-None).
"""
from __future__ import annotations

import collections
import http.server
import re
import threading
import time

FILES: dict[str, bytes] = {}
hits: collections.Counter = collections.Counter()
_once: set = set()
_lock = threading.Lock()
HTML = b"<!DOCTYPE html><html><head><title>Error</title></head><body>Service unavailable</body></html>"


def reset():
    hits.clear()
    _once.clear()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status, body, headers=(), length=True):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self):
        _, mode, name = self.path.split("/", 2)
        rng = self.headers.get("Range")
        with _lock:
            hits[(mode, name, rng)] += 1
        if mode in ("404", "500"):
            self.send_error(int(mode))
            return
        body = FILES[name]
        start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng else None
        if mode == "html":
            return self._send(200, HTML, [("Content-Type", "text/html; charset=utf-8")])
        if mode == "htmlbinary":
            return self._send(200, HTML, [("Content-Type", "application/octet-stream")])
        if mode == "empty":
            return self._send(200, b"", [("Content-Type", "application/octet-stream")])
        if mode == "always416" and rng:
            return self._send(416, b"", [("Content-Range", f"bytes */{len(body)}")])
        if mode == "chunkcut":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(f"{len(body):x}\r\n".encode() + body[: len(body) // 4])
            self.close_connection = True
            return
        if mode == "nolength":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        if mode == "cutonce":
            with _lock:
                first = name not in _once
                _once.add(name)
            mode = "cut" if first else "good"
        headers = [("Content-Type", "application/octet-stream")]
        status, part = 200, body
        if start is not None and mode in ("good", "slow", "cut", "badrange", "shortrange", "always416"):
            if start >= len(body):
                return self._send(416, b"", [("Content-Range", f"bytes */{len(body)}")])
            status = 206
            if mode == "badrange":
                part = body
                headers.append(("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}"))
            elif mode == "shortrange":
                part = body[start:]
                headers.append(("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body) + 10}"))
            else:
                part = body[start:]
                headers.append(("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Connection", "close")
        self.end_headers()
        if mode == "cut":
            self.wfile.write(part[: len(part) // 3])
        elif mode == "slow":
            for i in range(0, len(part), 1 << 16):
                self.wfile.write(part[i:i + (1 << 16)])
                time.sleep(0.01)
        else:
            self.wfile.write(part)
        self.close_connection = True
