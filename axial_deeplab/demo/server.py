"""``axial-deeplab-demo --weights model.pth``: a local page to try a model on photos (CPU is fine).

Serves, with the standard library's HTTP server, one page where one picks a sample photo or
uploads one, moves the post-processing sliders (centre threshold, NMS kernel, top-k, stuff
area) and sees the panoptic overlay, the semantic map, centres and offsets (toggles), the legend,
the list of segments (class, area, score) and the timing. The checkpoint supplies the config and
class names as for ``tools/infer.py`` (``--config-file``, ``--class-names`` and ``KEY VALUE``
overrides still win). Endpoints: ``GET /`` (the page), ``GET /api/info``, ``GET
/api/sample/NAME``, ``POST /api/predict?sample=NAME&threshold=...`` (or the image bytes as the
body) returning JSON (:meth:`.app.DemoModel.predict`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import mimetypes
import socket
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

from ..config import ConfigError
from .app import SETTINGS, DemoError, DemoModel, decode_image
from .page import PAGE

MAX_UPLOAD = 20 * 1024 * 1024


def _port(text: str) -> int:
    """An ``argparse`` type: a TCP port, 0..65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected a port in 0..65535 (0: any free one), got {text!r}"
        )
    return port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--weights", required=True, metavar="FILE", help="checkpoint (ours or converted)")
    add("--config-file", default="", metavar="FILE", help="config (default: the one in --weights)")
    add("--class-names", default="", metavar="FILE", help="JSON categories or text, one per line")
    add("--thing-ids", type=int, nargs="*", default=None, help="thing train ids (text names)")
    add("--device", default="cpu", help="cpu (default) or cuda")
    add("--amp", action="store_true", help="mixed precision: bf16 on CPUs, fp16 on GPUs (TEST.AMP)")
    add("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    add("--port", type=_port, default=7860, help="port (0: any free port)")
    add("--samples", nargs="*", default=None, metavar="DIR",
        help="sample photo folders (default: the COCO photos of ../shared/data and the held-out "
             "scenes of the checkpoint's DATASETS.SYNTHETIC_DIR)")  # fmt: skip
    add("--max-size", type=int, default=1024, help="shrink photos whose long side exceeds this")
    add("opts", nargs=argparse.REMAINDER, default=[], help="config overrides as KEY VALUE pairs")
    args = parser.parse_args(argv)
    args.tta_flip, args.tta_scales = False, None  # what infer_net's config reading expects
    return args


def make_handler(model: DemoModel) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``model``."""

    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # seconds a stalled client may hold its thread (the socket's timeout)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base's signature
            pass  # quiet: the page shows timing and errors

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: dict, status: int = HTTPStatus.OK) -> None:
            self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(self._get)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(self._post)

        def _answer(self, respond) -> None:
            """``respond()``; a bad request is a 400, anything else a 500, both with the message
            as JSON (the page shows it), and the traceback on the server's console."""
            try:
                respond()
            except DemoError as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
            except Exception as exc:  # noqa: BLE001 - any failure answers, never a dropped socket
                traceback.print_exc()
                message = " ".join(str(exc).split()) or type(exc).__name__
                self._json({"error": f"server error: {message}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

        def _get(self) -> None:
            path = urlsplit(self.path).path
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.encode("utf-8"), "text/html; charset=utf-8")
            elif path == "/api/info":
                self._json(
                    {
                        "samples": list(model.samples),
                        "defaults": dataclasses.asdict(model.defaults),
                        "limits": {k: [low, high] for k, (_, _, low, high) in SETTINGS.items()},
                        "classes": list(model.predictor.metadata.class_names),
                    }
                )
            elif path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            elif path.startswith("/api/sample/") and unquote(path[12:]) in model.samples:
                sample = model.samples[unquote(path[12:])]
                kind = mimetypes.guess_type(sample.name)[0] or "application/octet-stream"
                self._send(HTTPStatus.OK, sample.read_bytes(), kind)
            elif path == "/api/predict":  # a POST endpoint
                self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
                body = json.dumps({"error": "POST the photo's bytes to /api/predict"}).encode()
                self.send_header("Allow", "POST")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self._json({"error": f"not found: {path}"}, HTTPStatus.NOT_FOUND)

        def _post(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/api/predict":
                self._json({"error": f"not found: {url.path}"}, HTTPStatus.NOT_FOUND)
                return
            self._json(self._predict(dict(parse_qsl(url.query))))

        def _predict(self, query: dict) -> dict:
            header = self.headers.get("Content-Length") or "0"
            if not (header.strip().isascii() and header.strip().isdigit()):  # not "²"
                raise DemoError(f"Content-Length {header!r} is not a byte count")
            length = int(header)
            if length > MAX_UPLOAD:
                raise DemoError(f"upload of {length} bytes exceeds {MAX_UPLOAD}")
            body = self.rfile.read(length) if length else b""
            if self.headers.get_content_type().startswith("multipart/"):
                raise DemoError(
                    "a form upload: send the photo's bytes as the request body instead "
                    "(curl --data-binary @photo.jpg URL/api/predict)"
                )
            sample = query.pop("sample", "")
            if sample:
                if sample not in model.samples:
                    raise DemoError(f"unknown sample {sample!r}")
                body = model.samples[sample].read_bytes()
            if not body:
                raise DemoError("no photo: pick a sample or upload one")
            result = model.predict(decode_image(body), query)
            result["source"] = sample or "upload"
            return result

    return Handler


def serve(model: DemoModel, host: str, port: int) -> ThreadingHTTPServer:
    """A started-to-be server (call ``serve_forever``); ``server.server_address`` has the port."""
    server = ThreadingHTTPServer((host, port), make_handler(model))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        model = DemoModel.load(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        server = serve(model, args.host, args.port)
    except socket.gaierror as exc:  # a host name that does not resolve
        raise SystemExit(
            f"error: cannot serve on {args.host}:{args.port}: --host {args.host} is not an "
            f"address of this machine ({exc.strerror or exc}); e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    except OSError as exc:  # e.g. a second demo on the default port
        raise SystemExit(
            f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}; "
            "pick another port with --port (0: any free one)"
        ) from None
    host, port = server.server_address[:2]
    print(f"{len(model.samples)} sample photos; demo page on http://{host}:{port}/ "
          "(Ctrl+C stops it)", flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
