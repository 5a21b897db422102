"""A localhost stand-in for YouTube, for the audioset tests and benchmarks/bench_acquire.py:
the server, media files to serve and segment CSVs to ask for them.

``GET /v/<ytid>`` serves ``<media_dir>/<ytid>.<ext>`` with its content type and byte ranges
(ffmpeg seeks with them), so yt-dlp's generic extractor takes it for a direct media link.
``source.url_template: http://127.0.0.1:<port>/v/{ytid}`` points the real acquire code at it.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.sources.ffmpeg_binary import ffmpeg_executable

CONTENT_TYPES = {".webm": "audio/webm", ".m4a": "audio/mp4", ".ogg": "audio/ogg"}


def make_media(path: Path, tones: list[tuple[float, float]], codec: str = "libopus",
               sample_rate: int = 48_000, channels: int = 2) -> Path:
    """A real media file: sine tones of (frequency Hz, seconds) one after another, encoded
    by ffmpeg (``libopus`` in .webm, ``aac`` in a faststart .m4a). Frequency 0 is silence."""
    inputs, labels = [], []
    for index, (frequency, seconds) in enumerate(tones):
        source = (f"sine=f={frequency}:d={seconds}:r={sample_rate}" if frequency
                  else f"anullsrc=r={sample_rate}:cl=mono:d={seconds}")
        inputs += ["-f", "lavfi", "-i", source]
        labels.append(f"[{index}]")
    extra = ["-movflags", "+faststart"] if path.suffix == ".m4a" else []
    subprocess.run([ffmpeg_executable(), "-nostdin", "-v", "error", "-y", *inputs, "-filter_complex",
                    f"{''.join(labels)}concat=n={len(tones)}:v=0:a=1", "-ac", str(channels),
                    "-c:a", codec, *extra, str(path)], check=True)
    return path


def write_segments(path, segments):
    """An AudioSet-format segment CSV, header counts included."""
    labels = [label for *_, ls in segments for label in ls.split(",")]
    lines = ["# Segments csv created by a test",
             f"# num_ytids={len({s[0] for s in segments})}, num_segs={len(segments)}, "
             f"num_unique_labels={len(set(labels))}, num_positive_labels={len(labels)}",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    lines += [f'{ytid}, {start:.3f}, {end:.3f}, "{ls}"' for ytid, start, end, ls in segments]
    path.write_text("\n".join(lines) + "\n")
    return path


class MediaServer:
    """``with MediaServer(folder) as server:`` serves until the block ends.

    ``failures[ytid]`` holds HTTP statuses answered (one a request) before the file is
    served; ``hits[ytid]`` counts GET requests, ``first_request[ytid]`` is when the first
    came (time.monotonic), ``cookies`` collects Cookie headers and ``proxied`` counts
    requests that came through it as a proxy; ``latency_seconds`` delays every answer;
    ``hold_after`` holds answers until ``release``.
    """

    def __init__(self, media_dir: Path, latency_seconds: float = 0.0, port: int = 0):
        self.media_dir = Path(media_dir)
        self.latency_seconds = latency_seconds
        self.failures: dict[str, list[int]] = {}
        self.hits: Counter[str] = Counter()
        self.first_request: dict[str, float] = {}
        self.cookies: set[str] = set()
        self.proxied = 0
        self.allowed: int | None = None  # see hold_after
        self._released = threading.Event()
        self._released.set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v/{{ytid}}"

    def __enter__(self) -> MediaServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def hold_after(self, count: int) -> None:
        """Serve the first ``count`` ytids asked for; hold requests for any other until
        :meth:`release`, so that a test can stop a run in a known state, not a race."""
        self.allowed = count
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def _held(self, ytid: str) -> bool:
        with self._lock:
            self.first_request.setdefault(ytid, time.monotonic())
            return self.allowed is not None and ytid not in list(self.first_request)[:self.allowed]

    def _answer(self, ytid: str, count: bool) -> tuple[int, Path | None]:
        with self._lock:
            self.first_request.setdefault(ytid, time.monotonic())
            if count:
                self.hits[ytid] += 1
            pending = self.failures.get(ytid)
            if pending:
                return pending.pop(0), None
        files = sorted(self.media_dir.glob(f"{ytid}.*"))
        return (200, files[0]) if files else (404, None)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                time.sleep(server.latency_seconds)
                with server._lock:
                    server.cookies.update(filter(None, [self.headers.get("Cookie")]))
                    server.proxied += self.path.startswith("http")  # absolute URI: via a proxy
                match = re.fullmatch(r"/v/([A-Za-z0-9_-]+)", urlsplit(self.path).path)
                if match and server._held(match[1]):
                    server._released.wait(timeout=300)
                status, path = server._answer(match[1], count=body) if match else (404, None)
                if path is None:
                    self.send_error(status)
                    return
                data = path.read_bytes()
                start, end = 0, len(data) - 1
                ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if ranged:
                    start = int(ranged[1])
                    end = min(int(ranged[2]), end) if ranged[2] else end
                self.send_response(206 if ranged else 200)
                self.send_header("Content-Type", CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if body:
                    try:
                        self.wfile.write(data[start:end + 1])
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # ffmpeg hangs up once it has its section

            def log_message(self, *args):
                pass

        return Handler
