"""Real servers on loopback for tests: an `mlflow server` with proxied artifacts, and an HTTP proxy that fails on cue."""
from __future__ import annotations

import hashlib
import http.client
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, timeout_s: float = 90.0, accept: tuple[int, ...] = (200,)) -> None:
    """Poll `url` until it answers with a status in `accept` (a real API call: a server's /health can answer
    before its API does)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in accept:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in accept:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout_s} s")
        time.sleep(0.3)


@contextmanager
def mlflow_server(folder: Path, *options: str) -> Iterator[str]:
    """`mlflow server` on a SQLite store with proxied artifacts (`--artifacts-destination`); yields its URL."""
    port = free_port()
    log = open(folder / "mlflow-server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/server.db",
         "--artifacts-destination", str(folder / "served-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", *options], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", accept=(200, 403))
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


class FlakyProxy:
    """Forwards every request to `upstream`, except that once armed, the next `failures` GET requests whose path
    contains `path_part` are answered 503 without reaching it."""

    def __init__(self, upstream: str, path_part: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.path_part = path_part
        self.pending = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def arm(self, failures: int = 1) -> None:
        with self._lock:
            self.pending = failures

    def _should_fail(self, method: str, path: str) -> bool:
        with self._lock:
            if method == "GET" and self.path_part in path and self.pending > 0:
                self.pending -= 1
                self.failed += 1
                return True
        return False

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy._should_fail(self.command, self.path):
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
                connection = http.client.HTTPConnection(proxy.upstream, timeout=60)
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP | {"content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                connection.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        return Handler

    def __enter__(self) -> "FlakyProxy":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class FakeHub:
    """A loopback stand-in for the Hugging Face Hub's file endpoint, serving the folders in `repos` (repo id ->
    folder) at `/datasets/<repo>/resolve/<revision>/<path>` with the headers huggingface_hub reads (X-Repo-Commit,
    ETag), and the same files without Hub headers at `/plain/<repo>/<path>`. `gated=True` answers 401 GatedRepo."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repos: dict[str, Path], gated: bool = False) -> None:
        self.repos, self.gated = repos, gated
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _locate(self, path: str) -> tuple[Path | None, bool]:
        """(the file, whether the address is a Hub one)."""
        import re
        import urllib.parse

        path = urllib.parse.unquote(path.split("?")[0])
        hub = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/[^/]+/(.+)$", path)
        plain = re.match(r"^/plain/([^/]+/[^/]+)/(.+)$", path)
        match = hub or plain
        if not match or match.group(1) not in self.repos:
            return None, bool(hub)
        file = self.repos[match.group(1)] / match.group(2)
        return (file if file.is_file() else None), bool(hub)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self, body: bool) -> None:
                import hashlib

                self.close_connection = True
                hub.requests.append(f"{self.command} {self.path}")
                file, is_hub = hub._locate(self.path)
                if is_hub and hub.gated:
                    self.send_response(401)
                    self.send_header("X-Error-Code", "GatedRepo")
                    self.send_header("X-Error-Message", "Access to this dataset is restricted.")
                    self.send_header("Connection", "close")  # the server closes it: no client may reuse it
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if file is None:
                    self.send_response(404)
                    if is_hub:  # the Hub names the commit on a 404 too; huggingface_hub then caches the absence
                        self.send_header("X-Error-Code", "EntryNotFound")
                        self.send_header("X-Repo-Commit", FakeHub.COMMIT)
                    self.send_header("Connection", "close")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = file.read_bytes()
                self.send_response(200)
                self.send_header("Connection", "close")  # no kept-alive connection outlives stop()
                if is_hub:
                    self.send_header("X-Repo-Commit", FakeHub.COMMIT)
                    self.send_header("ETag", f'"{hashlib.sha256(payload).hexdigest()}"')
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if body:
                    self.wfile.write(payload)

            def _api(self) -> bool:
                """The two API calls snapshot_download makes: repo info (its commit) and the file tree."""
                import json
                import re

                match = re.match(r"^/api/datasets/([^/]+/[^/]+)/(revision|tree)/", self.path.split("?")[0])
                if not match:
                    return False
                hub.requests.append(f"{self.command} {self.path}")
                folder = hub.repos.get(match.group(1))
                files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder else []
                if match.group(2) == "revision":
                    payload = {"id": match.group(1), "sha": FakeHub.COMMIT,
                               "siblings": [{"rfilename": str(p.relative_to(folder))} for p in files]}
                else:
                    payload = [{"type": "file", "path": str(p.relative_to(folder)), "size": p.stat().st_size,
                                "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files]
                body = json.dumps(payload).encode()
                self.send_response(200 if folder else 404)
                if not folder:
                    self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self.close_connection = True
                if not self._api():
                    self._answer(body=True)

        return Handler

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def postgres_mlflow_server(*options: str, folder: Path | None = None) -> Iterator[str]:
    """`make server` on free loopback ports, as a process: a private PostgreSQL cluster (run as `postgres` when
    this is root) and `mlflow server` on it with proxied artifacts. Yields the tracking URI it prints; on exit it
    is stopped as Ctrl-C or `kill` stops it, which must take PostgreSQL down too, and everything is removed.
    `options` are more of its settings (`auth=true`, `tls_cert=...`); its folder is `SERVER_FOLDERS[uri]`. Given a
    server `folder` (a restored one), it runs on that and leaves it.

    The folder is made under /tmp rather than pytest's tmp_path, whose 0700 parents the `postgres` user cannot enter."""
    owned = folder is None
    folder = Path(tempfile.mkdtemp(prefix="clip-tables-lab-")) / "server" if owned else folder
    folder.parent.chmod(0o755)
    process = subprocess.Popen([sys.executable, "-m", "pipeline.lab.server", f"folder={folder}",
                                f"port={free_port()}", f"postgres.port={free_port()}", "workers=2", *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = _wait_for_line(process, "Workers use: tracking=server tracking.uri=", timeout_s=180)
        uri = line.strip().rsplit("=", 1)[1]
        SERVER_FOLDERS[uri] = folder
        yield uri
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert not (folder / "pgdata" / "postmaster.pid").exists(), "PostgreSQL was left running"
    finally:
        if process.poll() is None:  # a failed test: stopped as a user stops it, so PostgreSQL goes down too
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        if owned:
            shutil.rmtree(folder.parent, ignore_errors=True)


SERVER_FOLDERS: dict[str, Path] = {}  # the folder of each server `postgres_mlflow_server` started, by its URI


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as a lab makes one for a server of its own."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clip-tables test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _wait_for_line(process: subprocess.Popen, prefix: str, timeout_s: float) -> str:
    """The first line of `process`'s output starting with `prefix`; fails with what it said if it exits or stalls.
    A thread reads, so the wait has a deadline; it keeps draining the output so the process never blocks on it."""
    import queue

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put(None)],
                     daemon=True).start()
    said, deadline = [], time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            break  # it exited
        said.append(line)
        if line.startswith(prefix):
            return line
    raise RuntimeError(f"no line starting with {prefix!r}; it said: {''.join(said)[-2000:]}")
