"""Fixtures for the reference recorder tests: a bounded asyncio runner and a TLS certificate."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def run() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a coroutine on a fresh loop, bounded so a hung socket fails the test instead."""

    def runner(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(coro, timeout)

        return asyncio.run(bounded())

    return runner


@pytest.fixture
def uvrun() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Like ``run`` but on uvloop, the loop the daemon uses."""
    uvloop = pytest.importorskip("uvloop")

    def runner(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(coro, timeout)

        return uvloop.run(bounded())

    return runner


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mediafork-srs-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
