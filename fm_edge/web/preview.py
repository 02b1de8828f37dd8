"""Serve a site from ``fm-edge web`` on 127.0.0.1 with the cross-origin isolation headers WASM threads need.

A preview for one machine (and the browser test's server), not a production host: ``python -m
fm_edge.web.preview site/ [--port 8000]``.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import threading

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}  # fmt: skip

    def end_headers(self):
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, *args):  # quiet: the browser's requests are not the user's business
        pass


def start(folder, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``folder`` from a daemon thread on 127.0.0.1: (server, base URL); ``server.shutdown()`` stops it."""
    handler = functools.partial(_Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fm_edge.web.preview", description=__doc__.splitlines()[0]
    )
    parser.add_argument("folder", nargs="?", default="site", help="the folder fm-edge web wrote")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1")
    args = parser.parse_args(argv)
    server, url = start(args.folder, args.port)
    print(f"serving {args.folder} at {url} (Ctrl-C stops)")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
