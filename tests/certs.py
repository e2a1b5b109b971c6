"""A throwaway certificate authority and a server certificate for loopback, made with openssl.

The server certificate names both 127.0.0.1 (IP) and localhost (DNS), so clients can verify
the peer's name as well as the chain, whichever address they connect to.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL_HINT = "openssl is needed to make test certificates: apt-get install openssl"
# P-256 keys: generated in milliseconds where RSA takes a good part of a second.
KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA's certificate, and the server's certificate and private key."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path) -> Certificates:
    """A fresh CA in ``directory`` and a server certificate it signed, valid for a day."""
    openssl = shutil.which("openssl")
    assert openssl, OPENSSL_HINT
    directory.mkdir(parents=True, exist_ok=True)
    made = Certificates(
        ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem"
    )
    ca_key = directory / "ca-key.pem"
    _run(
        openssl, "req", "-x509", *KEY, "-nodes", "-days", "1",
        "-subj", "/CN=celery-exporter test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(ca_key), "-out", str(made.ca),
    )  # fmt: skip
    # OpenSSL 3's `req -CA` signs the new key with the CA in one step, extensions included.
    _run(
        openssl, "req", "-x509", *KEY, "-nodes", "-days", "1",
        "-CA", str(made.ca), "-CAkey", str(ca_key),
        "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "extendedKeyUsage=serverAuth",
        "-keyout", str(made.key), "-out", str(made.cert),
    )  # fmt: skip
    return made


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)
