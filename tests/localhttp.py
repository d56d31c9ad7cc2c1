"""A throw-away HTTP server on 127.0.0.1 for tests (downloads, the built book)."""
from __future__ import annotations

import contextlib
import http.server
import threading


@contextlib.contextmanager
def serve(handler):
    """Serve ``handler`` on a free loopback port in a background thread; yields the base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
