"""The daemon's TOML configuration, parsed into frozen dataclasses.

Keys (ARCHITECTURE.md, "External contracts"; docs/api.md has the full list)::

    [api]        listen = "127.0.0.1:8080", public_base_url = "http://…" (optional)
    [storage]    path = "data/mediafork.db"             # relative to the config file
    [media]      address = "127.0.0.1", port_range = [30000, 39999], workers = 1,
                 latch = true, relatch_after = 3.0
    [[accounts]] sid, auth_token | auth_token_env
    [[edges]]    name, address, default
    [[connectors]] account_sid, unique_name, srs, standby_srs, credentials_header,
                 credentials | credentials_env | credentials_encrypted,
                 digest_username, digest_password | digest_password_env | digest_password_encrypted
    [callbacks]  timeout = 10.0, max_attempts = 4
    [sip]        port = 5060, [sip.tls] ca_file, cert_file, key_file
    [secrets]    key_file | key_env                      # Fernet key for *_encrypted values
    [control_socket] path = "…/mediafork.sock"           # optional msgpack host socket

Every problem raises :class:`ConfigError` whose message starts with the key path
(``connectors[1].srs: not a SIP URI``). Messages never contain a secret's value: for secret
keys only the key path and the kind of problem are reported.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..recorder_api import Connector, Edge

__all__ = [
    "AccountConfig",
    "ApiConfig",
    "CallbackConfig",
    "Config",
    "ConfigError",
    "MediaConfig",
    "SipConfig",
    "StorageConfig",
    "decrypt_secret",
    "default_config",
    "encrypt_secret",
    "generate_secret_key",
    "load_config",
    "parse_config",
]

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,256}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9\-!#$%&'*+.^_`|~]{1,128}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TOKEN_FILE_NAME = "auth_token"


class ConfigError(Exception):
    """The configuration is invalid; the message names the key path and the problem."""


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_base_url: str | None = None
    """Base URL clients reach the API on (used in RecordingUrl); None → built from listen."""
    max_request_bytes: int = 64 * 1024

    @property
    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class StorageConfig:
    path: Path
    """The SQLite file."""

    @property
    def data_dir(self) -> Path:
        """Recordings and other files live next to the database."""
        return self.path.parent


@dataclass(frozen=True)
class MediaConfig:
    address: str = "127.0.0.1"
    port_range: tuple[int, int] = (30000, 39999)
    workers: int = 1
    """Media worker threads; each call (with its forks) lives on one of them."""
    latch: bool = True
    """A track without configured ``sources`` takes RTP only from the first address:port
    that sends it valid RTP (false: from anyone)."""
    relatch_after: float = 3.0
    """Seconds the latched source must be silent before another sender may take over."""


@dataclass(frozen=True)
class AccountConfig:
    sid: str
    auth_token: str = field(repr=False)


@dataclass(frozen=True)
class CallbackConfig:
    timeout: float = 10.0
    max_attempts: int = 4


@dataclass(frozen=True)
class SipConfig:
    port: int = 5060
    """Local SIP port (0: any free port)."""
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


@dataclass(frozen=True)
class Config:
    api: ApiConfig
    storage: StorageConfig
    media: MediaConfig = MediaConfig()
    accounts: tuple[AccountConfig, ...] = ()
    edges: tuple[Edge, ...] = ()
    connectors: tuple[Connector, ...] = ()
    callbacks: CallbackConfig = CallbackConfig()
    sip: SipConfig = SipConfig()
    control_socket: Path | None = None
    source: Path | None = None
    """The file the config was read from (None for embedded defaults)."""
    generated_token_file: Path | None = None
    """Set by :func:`default_config` when it generated the account's token."""

    def account(self, sid: str) -> AccountConfig | None:
        for account in self.accounts:
            if account.sid == sid:
                return account
        return None

    def auth_token_for(self, sid: str) -> str | None:
        account = self.account(sid)
        return account.auth_token if account else None

    def connectors_for(self, account_sid: str) -> dict[str, Connector]:
        return {c.unique_name: c for c in self.connectors if c.account_sid == account_sid}

    def default_edge(self) -> Edge | None:
        for edge in self.edges:
            if edge.default:
                return edge
        return self.edges[0] if self.edges else None


# -- secrets at rest --------------------------------------------------------------------------


def generate_secret_key() -> bytes:
    """A new Fernet key (urlsafe base64 text as bytes) for ``[secrets] key_file``."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key()


def encrypt_secret(key: bytes | str, plaintext: str) -> str:
    """Encrypt *plaintext* for a ``*_encrypted`` config value (``mediafork config encrypt``)."""
    from cryptography.fernet import Fernet

    try:
        fernet = Fernet(key.encode() if isinstance(key, str) else key)
    except (ValueError, TypeError):
        raise ConfigError("secrets key: not a valid Fernet key") from None
    return fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt_secret(key: bytes | str, token: str, where: str = "value") -> str:
    from cryptography.fernet import Fernet, InvalidToken

    try:
        fernet = Fernet(key.encode() if isinstance(key, str) else key)
    except (ValueError, TypeError):
        raise ConfigError("secrets key: not a valid Fernet key") from None
    try:
        return fernet.decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError, ValueError):
        # Never include the token: it is the secret's ciphertext and key-dependent.
        raise ConfigError(f"{where}: cannot be decrypted with the configured key") from None


# -- helpers ----------------------------------------------------------------------------------


class _Reader:
    """Typed access to one TOML table, with key paths for error messages."""

    def __init__(self, table: Mapping[str, Any], path: str, allowed: set[str]) -> None:
        self.table = table
        self.path = path
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None,
            required: bool = False, what: str | None = None) -> Any:
        if name not in self.table:
            if required:
                raise ConfigError(f"{self.key(name)}: required")
            return default
        value = self.table[name]
        # bool is an int subclass: "port = true" must not pass as 1.
        if isinstance(value, bool) and kind is not bool and bool not in (
            kind if isinstance(kind, tuple) else (kind,)
        ):
            raise ConfigError(f"{self.key(name)}: must be {what or _kind_name(kind)}")
        if not isinstance(value, kind):
            raise ConfigError(f"{self.key(name)}: must be {what or _kind_name(kind)}")
        return value

    def secret(self, name: str, key: bytes | None, *, required: bool = False) -> str | None:
        """``name``, ``name_env`` or ``name_encrypted``: at most one of them."""
        given = [k for k in (name, f"{name}_env", f"{name}_encrypted") if k in self.table]
        if len(given) > 1:
            raise ConfigError(f"{self.key(name)}: give only one of {', '.join(given)}")
        if not given:
            if required:
                raise ConfigError(f"{self.key(name)}: required (or {name}_env)")
            return None
        chosen = given[0]
        value = self.table[chosen]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.key(chosen)}: must be a non-empty string")
        if chosen.endswith("_env"):
            if not _ENV_NAME.fullmatch(value):
                raise ConfigError(f"{self.key(chosen)}: not an environment variable name")
            resolved = os.environ.get(value)
            if not resolved:
                raise ConfigError(f"{self.key(chosen)}: environment variable {value} is not set")
            return resolved
        if chosen.endswith("_encrypted"):
            if key is None:
                raise ConfigError(f"{self.key(chosen)}: needs [secrets] key_file or key_env")
            return decrypt_secret(key, value, self.key(chosen))
        if _CONTROL.search(value):
            raise ConfigError(f"{self.key(chosen)}: must not contain control characters")
        return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "an array", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _ip(value: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"{where}: not an IP address") from None


def _port(value: Any, where: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: must be an integer")
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ConfigError(f"{where}: must be a port number (1-65535)")
    return value


def _listen(value: str, where: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{where}: must be HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return _ip(host, where), _port(int(port_text), where, allow_zero=True)


def _sip_uri(value: str, where: str, edges: set[str]) -> str:
    from ..sip.uri import SipUri, split_connector_uri

    try:
        clean, _secure, edge = split_connector_uri(value)
        parsed = SipUri.parse(clean)
    except Exception:  # the SIP parser raises its own error types; all mean the same here
        raise ConfigError(f"{where}: not a SIP URI") from None
    if not parsed.is_sip or not parsed.host:
        raise ConfigError(f"{where}: not a SIP URI")
    if edge is not None and edge not in edges:
        raise ConfigError(f"{where}: edge {edge!r} is not a configured edge")
    return value


def _secrets_key(root: Mapping[str, Any], base: Path) -> bytes | None:
    table = root.get("secrets")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError("secrets: must be a table")
    reader = _Reader(table, "secrets", {"key_file", "key_env"})
    key_file = reader.get("key_file", str)
    key_env = reader.get("key_env", str)
    if (key_file is None) == (key_env is None):
        raise ConfigError("secrets: give exactly one of key_file, key_env")
    if key_env is not None:
        if not _ENV_NAME.fullmatch(key_env):
            raise ConfigError("secrets.key_env: not an environment variable name")
        text = os.environ.get(key_env)
        if not text:
            raise ConfigError(f"secrets.key_env: environment variable {key_env} is not set")
        return text.strip().encode("ascii", "replace")
    path = (base / key_file).expanduser()
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"secrets.key_file: cannot read ({exc.strerror})") from None


# -- parsing ----------------------------------------------------------------------------------

_TOP_LEVEL = {"api", "storage", "media", "accounts", "edges", "connectors", "callbacks", "sip",
              "secrets", "control_socket"}


def _table(root: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = root.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be a table")
    return value


def _array(root: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    value = root.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{name}: must be an array of tables ([[{name}]])")
    return value


def parse_config(root: Mapping[str, Any], base_dir: Path | str = ".",
                 source: Path | None = None) -> Config:
    """Validate an already-parsed TOML document. Relative paths are relative to *base_dir*."""
    base = Path(base_dir)
    unknown = sorted(set(root) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key")
    key = _secrets_key(root, base)

    api_r = _Reader(_table(root, "api"), "api", {"listen", "public_base_url",
                                                 "max_request_bytes"})
    host, port = _listen(api_r.get("listen", str, "127.0.0.1:8080"), "api.listen")
    public = api_r.get("public_base_url", str)
    if public is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", public):
        raise ConfigError("api.public_base_url: must be an absolute http(s) URL")
    max_request = api_r.get("max_request_bytes", int, 64 * 1024)
    if not 1024 <= max_request <= 16 * 1024 * 1024:
        raise ConfigError("api.max_request_bytes: must be between 1024 and 16777216")
    api = ApiConfig(host=host, port=port, public_base_url=public, max_request_bytes=max_request)

    storage_r = _Reader(_table(root, "storage"), "storage", {"path"})
    storage = StorageConfig(path=(base / storage_r.get("path", str, "data/mediafork.db")))

    media_r = _Reader(_table(root, "media"), "media", {"address", "port_range", "workers",
                                                       "latch", "relatch_after"})
    address = _ip(media_r.get("address", str, "127.0.0.1"), "media.address")
    pr = media_r.get("port_range", list, [30000, 39999])
    if len(pr) != 2:
        raise ConfigError("media.port_range: must be [first, last]")
    first = _port(pr[0], "media.port_range[0]")
    last = _port(pr[1], "media.port_range[1]")
    if last - first < 3:
        raise ConfigError("media.port_range: must hold at least 4 ports (first < last)")
    workers = media_r.get("workers", int, 1)
    if not 1 <= workers <= 64:
        raise ConfigError("media.workers: must be between 1 and 64")
    latch = media_r.get("latch", bool, True)
    relatch_after = float(media_r.get("relatch_after", (int, float), 3.0, what="a number"))
    if not 0 <= relatch_after <= 3600:
        raise ConfigError("media.relatch_after: must be between 0 and 3600 seconds")
    media = MediaConfig(address=address, port_range=(first, last), workers=workers,
                        latch=latch, relatch_after=relatch_after)

    accounts: list[AccountConfig] = []
    seen_accounts: set[str] = set()
    for i, table in enumerate(_array(root, "accounts")):
        r = _Reader(table, f"accounts[{i}]", {"sid", "auth_token", "auth_token_env",
                                              "auth_token_encrypted"})
        sid = r.get("sid", str, required=True)
        if not _ACCOUNT_SID.fullmatch(sid):
            raise ConfigError(f"accounts[{i}].sid: must be 'AC' followed by 32 hex digits")
        if sid in seen_accounts:
            raise ConfigError(f"accounts[{i}].sid: duplicate account")
        seen_accounts.add(sid)
        token = r.secret("auth_token", key, required=True)
        assert token is not None
        if len(token) < 16:
            raise ConfigError(f"accounts[{i}].auth_token: must be at least 16 characters")
        accounts.append(AccountConfig(sid=sid, auth_token=token))

    edges: list[Edge] = []
    for i, table in enumerate(_array(root, "edges")):
        r = _Reader(table, f"edges[{i}]", {"name", "address", "default"})
        name = r.get("name", str, required=True)
        if not _NAME.fullmatch(name):
            raise ConfigError(f"edges[{i}].name: must be letters, digits, '_', '.', '-'")
        if any(e.name == name for e in edges):
            raise ConfigError(f"edges[{i}].name: duplicate edge")
        edges.append(Edge(name=name, address=_ip(r.get("address", str, required=True),
                                                 f"edges[{i}].address"),
                          default=r.get("default", bool, False)))
    if sum(e.default for e in edges) > 1:
        raise ConfigError("edges: at most one edge may be default")
    edge_names = {e.name for e in edges}

    connectors: list[Connector] = []
    for i, table in enumerate(_array(root, "connectors")):
        where = f"connectors[{i}]"
        r = _Reader(table, where, {
            "account_sid", "unique_name", "srs", "standby_srs", "credentials_header",
            "credentials", "credentials_env", "credentials_encrypted", "digest_username",
            "digest_password", "digest_password_env", "digest_password_encrypted",
            "metadata_content_type"})
        account_sid = r.get("account_sid", str, required=True)
        if account_sid not in seen_accounts:
            raise ConfigError(f"{where}.account_sid: not a configured account")
        unique_name = r.get("unique_name", str, required=True)
        if not unique_name or len(unique_name) > 256 or _CONTROL.search(unique_name):
            raise ConfigError(f"{where}.unique_name: must be 1-256 printable characters")
        if any(c.account_sid == account_sid and c.unique_name == unique_name
               for c in connectors):
            raise ConfigError(f"{where}.unique_name: duplicate for this account")
        srs = _sip_uri(r.get("srs", str, required=True), f"{where}.srs", edge_names)
        standby = r.get("standby_srs", list, [])
        for j, uri in enumerate(standby):
            if not isinstance(uri, str):
                raise ConfigError(f"{where}.standby_srs[{j}]: must be a string")
            _sip_uri(uri, f"{where}.standby_srs[{j}]", edge_names)
        header = r.get("credentials_header", str)
        if header is not None and not _HEADER_NAME.fullmatch(header):
            raise ConfigError(f"{where}.credentials_header: not a SIP header name")
        credentials = r.secret("credentials", key)
        if (header is None) != (credentials is None):
            raise ConfigError(f"{where}.credentials: credentials_header and credentials "
                              "go together")
        digest_user = r.get("digest_username", str)
        digest_password = r.secret("digest_password", key)
        if (digest_user is None) != (digest_password is None):
            raise ConfigError(f"{where}.digest_password: digest_username and digest_password "
                              "go together")
        content_type = r.get("metadata_content_type", str, "application/rs-metadata+xml")
        connectors.append(Connector(
            account_sid=account_sid, unique_name=unique_name, srs=srs,
            standby_srs=tuple(standby), credentials_header=header, credentials=credentials,
            digest_username=digest_user, digest_password=digest_password,
            metadata_content_type=content_type))

    cb_r = _Reader(_table(root, "callbacks"), "callbacks", {"timeout", "max_attempts"})
    timeout = float(cb_r.get("timeout", (int, float), 10.0, what="a number"))
    if not 0.1 <= timeout <= 300:
        raise ConfigError("callbacks.timeout: must be between 0.1 and 300 seconds")
    attempts = cb_r.get("max_attempts", int, 4)
    if not 1 <= attempts <= 20:
        raise ConfigError("callbacks.max_attempts: must be between 1 and 20")

    sip_table = dict(_table(root, "sip"))
    tls_table = sip_table.pop("tls", {})
    if not isinstance(tls_table, dict):
        raise ConfigError("sip.tls: must be a table")
    sip_r = _Reader(sip_table, "sip", {"port"})
    tls_r = _Reader(tls_table, "sip.tls", {"ca_file", "cert_file", "key_file"})

    def tls_path(name: str) -> Path | None:
        value = tls_r.get(name, str)
        if value is None:
            return None
        path = base / value
        if not path.is_file():
            raise ConfigError(f"sip.tls.{name}: file not found")
        return path

    sip = SipConfig(port=_port(sip_r.get("port", int, 5060), "sip.port", allow_zero=True),
                    tls_ca_file=tls_path("ca_file"), tls_cert_file=tls_path("cert_file"),
                    tls_key_file=tls_path("key_file"))
    if (sip.tls_cert_file is None) != (sip.tls_key_file is None):
        raise ConfigError("sip.tls.key_file: cert_file and key_file go together")

    socket_path = None
    if "control_socket" in root:
        cs_r = _Reader(_table(root, "control_socket"), "control_socket", {"path"})
        socket_path = base / cs_r.get("path", str, required=True)

    return Config(api=api, storage=storage, media=media, accounts=tuple(accounts),
                  edges=tuple(edges), connectors=tuple(connectors),
                  callbacks=CallbackConfig(timeout=timeout, max_attempts=attempts), sip=sip,
                  control_socket=socket_path, source=source)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML file."""
    file = Path(path)
    try:
        with file.open("rb") as fh:
            root = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        # The decoder's message gives line and column, never the offending text.
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    return parse_config(root, file.parent, source=file)


def default_config(data_dir: str | os.PathLike[str]) -> Config:
    """The embedded defaults: loopback, SQLite in *data_dir*, one account.

    The account's SID and token are kept in ``data_dir/auth_token`` (mode 0600, ``SID:TOKEN``)
    so the daemon keeps the same credentials across restarts; when this call created the file
    ``generated_token_file`` is set and the daemon prints the credentials once.
    """
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    token_file = data / TOKEN_FILE_NAME
    generated = False
    try:
        sid, _, token = token_file.read_text().strip().partition(":")
        if not _ACCOUNT_SID.fullmatch(sid) or len(token) < 16:
            raise ConfigError(f"{token_file}: not SID:TOKEN; delete it to generate a new one")
    except FileNotFoundError:
        sid = "AC" + secrets.token_hex(16)
        token = secrets.token_hex(16)
        # O_EXCL + 0600 from the start: the token is never readable by others, not even
        # between creation and a later chmod.
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{sid}:{token}\n")
        generated = True
    return Config(
        api=ApiConfig(),
        storage=StorageConfig(path=data / "mediafork.db"),
        accounts=(AccountConfig(sid=sid, auth_token=token),),
        generated_token_file=token_file if generated else None,
    )
