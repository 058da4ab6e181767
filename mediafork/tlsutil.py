"""A self-signed certificate for loopback use (the embedded reference recorder
and tests), made with `cryptography`. Not for production recorders: those have
real certificates, which mediafork verifies against the configured CA file."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from .private_dirs import make_private_dir


def self_signed(directory: Path, name: str = "recorder", host: str = "127.0.0.1",
                days: int = 30, *, extra_hosts: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``name.crt`` and ``name.key`` (0600) for ``host`` (and ``extra_hosts``, IP
    addresses or DNS names); returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mediafork {name}")])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = []
    for each in (host, *extra_hosts):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(each)))
        except ValueError:
            alt.append(x509.DNSName(each))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    make_private_dir(directory)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a key file that already existed
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path
