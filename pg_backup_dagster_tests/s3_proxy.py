"""A small fault-injecting reverse proxy in front of moto's server: boto3 speaks real HTTP to it.

While a rule is armed, matching requests get an HTTP error status with S3 error XML, or their TCP connection
reset (RST) after the body was read; everything else is relayed to moto unchanged, after `latency` seconds
(a network round trip: the benchmarks put 20 ms, a same-region S3 request, in front of moto).

moto stores the SHA256 checksum a client claims without checking it, and never echoes it. With
`aws_checksums`, the proxy does what S3 does: a PUT or UploadPart whose body does not hash to its
`x-amz-checksum-sha256` is refused (400 BadDigest) and a matching one gets the checksum echoed in the response;
CompleteMultipartUpload echoes the composite checksum of the parts it lists. A 400 answers BadDigest (a part
corrupted in transit), which boto3 does not retry, so a test of a failed upload does not wait on retry backoff.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

RESET = "reset"
BAD_DIGEST = "bad-digest"
CHECKSUM_HEADER = "x-amz-checksum-sha256"
_REASONS = {400: "BadDigest", 403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}


@dataclass
class Rule:
    """Which requests to break and how: an HTTP status, or RESET; `times=None` breaks every match."""

    method: str
    action: int | str
    part_number: int | None = None  # an UploadPart with this number; None: any request with this method
    key_contains: str = ""
    times: int | None = None

    def matches(self, method: str, path: str) -> bool:
        split = urlsplit(path)
        query = parse_qs(split.query)
        if method != self.method or self.key_contains not in split.path:
            return False
        if self.part_number is not None:
            return "uploadId" in query and query.get("partNumber") == [str(self.part_number)]
        return True


class FaultProxy(ThreadingHTTPServer):
    """Relays to `upstream`; `rule` (set with `inject`) decides what to break. `hits` counts injected faults."""

    daemon_threads = True

    request_queue_size = 128  # many concurrent transfers connect at once

    def __init__(self, upstream: str, latency: float = 0.0, aws_checksums: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = urlsplit(upstream)
        self.latency = latency
        self.aws_checksums = aws_checksums
        self.requests = 0
        self.in_flight = 0
        self.peak_in_flight = 0  # the most requests relayed at one time
        self.rule: Rule | None = None
        self.hits = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @contextmanager
    def counting(self) -> Iterator[None]:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    @contextmanager
    def inject(self, rule: Rule) -> Iterator[Rule]:
        self.rule, self.hits = rule, 0
        try:
            yield rule
        finally:
            self.rule = None

    def fault_for(self, method: str, path: str) -> int | str | None:
        with self._lock:
            rule = self.rule
            if rule is None or not rule.matches(method, path) or (rule.times is not None and self.hits >= rule.times):
                return None
            self.hits += 1
            return rule.action

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a reset connection is the point, not an error worth a traceback


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _relay(self) -> None:
        body = self._body()
        with self.server.counting():
            self._answer(body)

    def _answer(self, body: bytes) -> None:
        if self.server.latency:
            time.sleep(self.server.latency)
        fault = self.server.fault_for(self.command, self.path)
        if fault == RESET:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        checksum = self._checksum_echo(body) if self.server.aws_checksums else None
        if checksum == BAD_DIGEST:
            fault = 400
        if isinstance(fault, int):
            code = _REASONS.get(fault, "InternalError")
            xml = f"<Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>".encode()
            self._send(fault, {"Content-Type": "application/xml"}, xml)
            return
        dropped = ("transfer-encoding", "content-length", "expect")  # the body is already read and re-sent whole
        headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.server.upstream.hostname, self.server.upstream.port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            skip = ("transfer-encoding", "connection") + (() if self.command == "HEAD" else ("content-length",))
            answer = {k: v for k, v in response.getheaders() if k.lower() not in skip}
            if checksum and response.status == 200:
                answer[CHECKSUM_HEADER] = checksum
                data = data.replace(b"</CompleteMultipartUploadResult>",
                                    f"<ChecksumSHA256>{checksum}</ChecksumSHA256></CompleteMultipartUploadResult>".encode())
            self._send(response.status, answer, data)
        finally:
            conn.close()

    def _checksum_echo(self, body: bytes) -> str | None:
        """What S3 answers for a checksummed write: the checksum to echo, BAD_DIGEST, or None (nothing to do)."""
        query = parse_qs(urlsplit(self.path).query)
        if self.command == "POST" and "uploadId" in query:  # CompleteMultipartUpload: the parts' composite
            parts = re.findall(rb"<ChecksumSHA256>([^<]+)</ChecksumSHA256>", body)
            if not parts:
                return None
            composite = hashlib.sha256(b"".join(base64.b64decode(p) for p in parts)).digest()
            return f"{base64.b64encode(composite).decode()}-{len(parts)}"
        claimed = self.headers.get(CHECKSUM_HEADER)
        if self.command != "PUT" or not claimed:
            return None
        return claimed if base64.b64encode(hashlib.sha256(body).digest()).decode() == claimed else BAD_DIGEST

    def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers and "content-length" not in headers:
            self.send_header("Content-Length", str(len(data)))  # a HEAD keeps the object's length
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay


@contextmanager
def running_proxy(upstream: str, latency: float = 0.0, aws_checksums: bool = False) -> Iterator[FaultProxy]:
    server = FaultProxy(upstream, latency, aws_checksums)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
