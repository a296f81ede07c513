"""A local HTTP server (127.0.0.1, a free port) over a directory, for the tests of downloads from a mirror
(``data fetch``, the shipped models' wheels): its URL and the paths requested."""

from __future__ import annotations

import http.server
import threading
from functools import partial
from pathlib import Path


class Server:
    """Serves ``root`` at ``url`` until :meth:`close`; ``requests`` lists the paths asked for, in order."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                seen.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
