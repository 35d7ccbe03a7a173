"""A TLS front for the test broker: certificates made with the openssl CLI, and a proxy that
requires a client certificate (as Candlepin's Artemis does) and forwards to RabbitMQ's STOMP port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def make_certificates(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for localhost and a client certificate, as PEM paths."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", "server.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=katello-{name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.crt", *extra)  # fmt: skip
    return {name: str(folder / name) for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


@contextlib.contextmanager
def tls_proxy(certificates: dict[str, str], upstream: tuple[str, int]) -> Iterator[tuple[int, list[str]]]:
    """Yields (port, common names of the client certificates it accepted)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates["server.crt"], certificates["server.key"])
    context.load_verify_locations(certificates["ca.crt"])
    context.verify_mode = ssl.CERT_REQUIRED
    server = socket.create_server(("127.0.0.1", 0))
    clients: list[str] = []

    def pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def serve_one(raw: socket.socket) -> None:
        try:
            secure = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        subject = dict(pair[0] for pair in secure.getpeercert()["subject"])
        clients.append(subject["commonName"])
        plain = socket.create_connection(upstream)
        back = threading.Thread(target=pump, args=(plain, secure), daemon=True)
        back.start()
        pump(secure, plain)
        back.join(10)
        secure.close()
        plain.close()

    def accept_forever() -> None:
        while True:
            try:
                raw, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(raw,), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    try:
        yield server.getsockname()[1], clients
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close() alone would not)
        server.close()
