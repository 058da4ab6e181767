"""The daemon's TOML configuration, parsed into frozen dataclasses.

Keys (ARCHITECTURE.md, "External contracts"; docs/api.md has the full list)::

    [api]        listen = "127.0.0.1:8080", public_base_url = "http://…" (optional),
                 max_request_bytes, max_connections, max_connections_per_client,
                 header_timeout = 10.0, idle_timeout = 60.0
    [storage]    path = "data/mediafork.db"             # relative to the config file
    [media]      address = "127.0.0.1", port_range = [30000, 39999], workers = 1,
                 port_reserve (a tenth of the range), call_idle_timeout = 600,
                 latch = true, relatch_after = 3.0
    [[accounts]] sid, auth_token | auth_token_env, max_calls, max_siprecs, max_recordings
    [[edges]]    name, address, default
    [[connectors]] account_sid, unique_name, srs, standby_srs, credentials_header,
                 credentials | credentials_env | credentials_encrypted,
                 digest_username, digest_password | digest_password_env | digest_password_encrypted,
                 metadata_content_type, skip_failover_codes = [],
                 [connectors.sip] headers, parameters_as, parameter_header_prefix,
                 parameter_headers_max_bytes, group_name, extension_xml, session_expires,
                 keepalive_interval, setup_timeout, srtp_suites, transport_profile
    [callbacks]  timeout = 10.0, retry_for = 3600, backoff_max = 60, max_attempts = 0,
                 allow = [], deny = []   # CIDRs, host names
    [sip]        port = 5060, start_degraded = false, max_connections, max_connections_per_peer,
                 tls_handshake_timeout = 10.0, idle_timeout = 30.0,
                 [sip.tls] ca_file, cert_file, key_file, server_cert_file, server_key_file
                 [sip.health] interval = 30.0, timeout = 5.0, down_after = 2
                 [sip.failover] max_failovers = 2
    [secrets]    key_file | key_env                      # Fernet key for *_encrypted values
    [control_socket] path = "…/mediafork.sock"           # optional msgpack host socket
                 max_connections, idle_timeout = 300.0
    [[media_sources]] name, kind = "rtpengine", ng = "HOST:PORT", timeout = 3.0,
                 retransmit = 0.5, max_outstanding = 1024, check_interval = 5.0

Every problem raises :class:`ConfigError` whose message starts with the key path
(``connectors[1].srs: not a SIP URI``). Messages never contain a secret's value: for secret
keys only the key path and the kind of problem are reported. A secret is checked after it is
resolved, with the same rules whether it was inline, ``_env`` or ``_encrypted``
(:mod:`.secret_rules`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..control.egress import EgressPolicy
from ..control.quotas import DEFAULT_MAX_CALLS, DEFAULT_MAX_RECORDINGS, DEFAULT_MAX_SIPRECS
from ..private_dirs import make_private_dir
from ..recorder_api import Connector, Edge
from ..sip.profile import ProfileError, SipProfile, parse_profile
from ..sip.recorder_health import HealthConfig
from .secret_rules import (
    ANY_SECRET,
    AUTH_TOKEN,
    CONTROL_CHARACTERS,
    DIGEST_PASSWORD,
    HEADER_VALUE,
    SecretRule,
)

__all__ = [
    "AccountConfig",
    "ApiConfig",
    "CallbackConfig",
    "Config",
    "ConfigError",
    "ControlSocketLimits",
    "MediaConfig",
    "MediaSourceConfig",
    "SipConfig",
    "StorageConfig",
    "decrypt_secret",
    "default_config",
    "encrypt_secret",
    "generate_secret_key",
    "load_config",
    "parse_config",
    "port_range_text",
    "with_overrides",
]

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,256}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9\-!#$%&'*+.^_`|~]{1,128}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TOKEN_FILE_NAME = "auth_token"
DEFAULT_CALL_IDLE_TIMEOUT = 600.0


class ConfigError(Exception):
    """The configuration is invalid; the message names the key path and the problem."""


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    public_base_url: str | None = None
    """Base URL clients reach the API on (used in RecordingUrl); None → built from listen."""
    max_request_bytes: int = 64 * 1024
    # Listener bounds (mediafork.admission): None = derived from the descriptor limit.
    max_connections: int | None = None
    max_connections_per_client: int | None = None
    header_timeout: float = 10.0
    """Seconds a client has to send a complete request head (from connect, or from the
    first byte of a keep-alive connection's next request)."""
    idle_timeout: float = 60.0
    """Seconds a keep-alive connection may stay silent between requests."""

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
    io: str = "auto"
    """The media I/O backend: "auto" (default: io_uring where the kernel allows it, else
    epoll with a warning saying why), "io_uring" (fail to start without it) or "epoll"."""
    tick_us: int = 0
    """Microseconds a media worker lets pass between two wakes, so one wake serves every
    socket that became ready meanwhile (0: wake per readiness; at most 1000)."""
    srtp_transform: str = "auto"
    """What protects the RTP of forks keyed with an AES-CM suite: "auto" (default: the lean
    sender transform where the build has it, else libsrtp) or "libsrtp"."""
    port_reserve: int | None = None
    """Ports kept for accounts within their fair share (control.quotas); None: a tenth."""
    call_idle_timeout: float = DEFAULT_CALL_IDLE_TIMEOUT
    """Seconds without ingress media or API activity after which a call is ended; 0: never."""

    @property
    def port_capacity(self) -> int:
        """Port numbers the engine can hand out (its allocator starts on an even port)."""
        first, last = self.port_range
        return last - (first + (first & 1)) + 1

    @property
    def reserved_ports(self) -> int:
        return self.port_capacity // 10 if self.port_reserve is None else self.port_reserve


@dataclass(frozen=True)
class AccountConfig:
    sid: str
    auth_token: str = field(repr=False)
    max_calls: int = DEFAULT_MAX_CALLS
    """Live calls at once (control.quotas); more get 429."""
    max_siprecs: int = DEFAULT_MAX_SIPRECS
    """Live (starting or in-progress) Siprecs at once, over all the account's calls."""
    max_recordings: int = DEFAULT_MAX_RECORDINGS
    """Live (not yet completed) local recordings at once."""


@dataclass(frozen=True)
class CallbackConfig:
    timeout: float = 10.0
    max_attempts: int = 0
    """Attempts per event; 0: no count limit, only ``retry_for``."""
    retry_for: float = 3600.0
    """Seconds from an event's creation during which failed attempts are retried."""
    backoff_max: float = 60.0
    """Cap of the exponential backoff between attempts, seconds."""
    allow: tuple[str, ...] = ()
    """Egress policy entries (CIDRs, host names, ``*.suffix``): see mediafork.control.egress."""
    deny: tuple[str, ...] = ()

    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy.from_rules(self.allow, self.deny)


@dataclass(frozen=True)
class SipConfig:
    port: int = 5060
    """Local SIP port (0: any free port)."""
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_server_cert_file: Path | None = None
    """Certificate of our SIP TLS listener (port + 1); None: ``tls_cert_file`` if set, else
    a self-signed one generated in the data folder's ``tls/`` at start."""
    tls_server_key_file: Path | None = None
    start_degraded: bool = False
    """Start even when an edge's SIP port cannot be bound (/readyz then answers 503
    naming it); by default such a start fails."""
    # Inbound TCP/TLS listener bounds (mediafork.admission): None = derived from the
    # descriptor limit. Connections we open to recorders are not counted.
    max_connections: int | None = None
    max_connections_per_peer: int | None = None
    tls_handshake_timeout: float = 10.0
    idle_timeout: float = 30.0
    """Seconds an inbound connection may go without a complete SIP message either way."""
    health: HealthConfig = HealthConfig()
    """``[sip.health]``: OPTIONS health checks of every connector's recorders."""
    max_failovers: int = 2
    """``[sip.failover] max_failovers``: mid-call failovers per Siprec (0: none)."""


@dataclass(frozen=True)
class ControlSocketLimits:
    max_connections: int | None = None
    """None = derived from the descriptor limit."""
    idle_timeout: float = 300.0
    """Seconds a connection that has not subscribed to events may stay silent."""


@dataclass(frozen=True)
class MediaSourceConfig:
    """One ``[[media_sources]]`` entry: where calls registered with ``media_source`` get
    their media from (mediafork/mediasource/)."""

    name: str
    kind: str
    """``rtpengine`` (the only kind so far)."""
    ng: tuple[str, int]
    """rtpengine's ``listen-ng`` address (UDP)."""
    timeout: float = 3.0
    """Seconds an NG request may take, retransmissions included."""
    retransmit: float = 0.5
    """Seconds before the first retransmission (then doubled, at most 2 s apart)."""
    max_outstanding: int = 1024
    """NG requests waiting for an answer at once; more fail at once (code 900070)."""
    check_interval: float = 5.0
    """Seconds between liveness checks of each call attached to this source."""


MEDIA_SOURCE_KINDS = ("rtpengine",)


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
    control_socket_limits: ControlSocketLimits = ControlSocketLimits()
    media_sources: tuple[MediaSourceConfig, ...] = ()
    source: Path | None = None
    """The file the config was read from (None for embedded defaults)."""
    generated_token_file: Path | None = None
    """Set by :func:`default_config` when it generated the account's token."""
    log_level: str | None = None
    """``[logging] level``; None: not set in the file (``--log-level`` or ``info``)."""
    clear_secrets: tuple[str, ...] = ()
    """Key paths whose secret is written in clear in :attr:`source` (start-up warning)."""

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

    def media_source(self, name: str) -> MediaSourceConfig | None:
        for media_source in self.media_sources:
            if media_source.name == name:
                return media_source
        return None

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
    """Encrypt *plaintext* for a ``*_encrypted`` config value (``mediafork secret encrypt``)."""
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
        self.clear_secrets: list[str] = []
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

    def secret(self, name: str, key: bytes | None, rule: SecretRule = ANY_SECRET, *,
               required: bool = False) -> str | None:
        """``name``, ``name_env`` or ``name_encrypted``: at most one of them.

        The resolved value is checked against *rule* whatever its source, so a CR/LF from an
        environment variable or inside an encrypted value is refused at load like an inline
        one. Key paths given in clear are recorded in :attr:`clear_secrets`.
        """
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
            origin = f"the value of environment variable {value}"
        elif chosen.endswith("_encrypted"):
            if key is None:
                raise ConfigError(f"{self.key(chosen)}: needs [secrets] key_file or key_env")
            resolved = decrypt_secret(key, value, self.key(chosen))
            origin = "the decrypted value"
        else:
            resolved = value
            origin = "the value"
            self.clear_secrets.append(self.key(chosen))
        problem = rule.problem(resolved)
        if problem is not None:
            raise ConfigError(f"{self.key(chosen)}: {origin} {problem}")
        return resolved


_CONTROL = CONTROL_CHARACTERS


def _plain(value: str, where: str) -> str:
    """A text key that ends up in a SIP header, a file path or a URL: no control characters
    (a CR/LF would split a header, a NUL would truncate a path)."""
    if _CONTROL.search(value):
        raise ConfigError(f"{where}: must not contain control characters")
    return value


def _metadata_content_type(value: str, where: str) -> str:
    """The Content-Type of the SIPREC metadata part: a media type the SIP layer speaks."""
    from ..sip.headers import ContentType
    from ..sip.metadata import CONTENT_TYPE, LEGACY_CONTENT_TYPE

    _plain(value, where)  # before parsing: the parser strips a trailing CR/LF
    try:
        ContentType.parse(value)
    except ValueError:
        raise ConfigError(f"{where}: not a media type (type/subtype)") from None
    if value not in (CONTENT_TYPE, LEGACY_CONTENT_TYPE):
        raise ConfigError(f"{where}: must be {CONTENT_TYPE!r} or {LEGACY_CONTENT_TYPE!r}")
    return value


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


def _port_range(value: list[Any], where: str) -> tuple[int, int]:
    if len(value) != 2:
        raise ConfigError(f"{where}: must be [first, last]")
    first = _port(value[0], f"{where}[0]")
    last = _port(value[1], f"{where}[1]")
    if last - first < 3:
        raise ConfigError(f"{where}: must hold at least 4 ports (first < last)")
    return first, last


def port_range_text(value: str, where: str) -> tuple[int, int]:
    """``FIRST-LAST`` (a command-line flag or an environment variable) as a port range."""
    first, sep, last = value.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ConfigError(f"{where}: must be FIRST-LAST, e.g. 30000-39999")
    return _port_range([int(first), int(last)], where)


def with_overrides(config: Config, *, listen: str | None = None, sip_port: str | None = None,
                   media_ports: str | None = None) -> Config:
    """*config* with the command line's (or the environment's) values in place of the
    file's or the embedded defaults', checked like the file's keys. ``where`` in errors
    names the flag."""
    import dataclasses

    if listen is not None:
        host, port = _listen(listen, "--listen")
        config = dataclasses.replace(config, api=dataclasses.replace(config.api, host=host,
                                                                     port=port))
    if sip_port is not None:
        if not sip_port.strip().isdigit():
            raise ConfigError("--sip-port: must be a port number (0-65535)")
        port = _port(int(sip_port), "--sip-port", allow_zero=True)
        config = dataclasses.replace(config, sip=dataclasses.replace(config.sip, port=port))
    if media_ports is not None:
        port_range = port_range_text(media_ports, "--media-ports")
        config = dataclasses.replace(config, media=dataclasses.replace(
            config.media, port_range=port_range))
    return config


def _listen(value: str, where: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{where}: must be HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return _ip(host, where), _port(int(port_text), where, allow_zero=True)


def _cap(reader: _Reader, name: str) -> int | None:
    """A connection cap (absent: None, derived from the descriptor limit at start)."""
    value = reader.get(name, int)
    if value is not None and not 1 <= value <= 1_000_000:
        raise ConfigError(f"{reader.key(name)}: must be between 1 and 1000000")
    return value


def _check_cert_pair(cert: Path, key: Path, where: str) -> None:
    """The certificate and its key load and belong together (checked at load, so a reload
    or a start never gets as far as a listener with a broken identity). The message names
    the files, never their contents."""
    import ssl

    try:
        # A callable password: an encrypted key fails here instead of prompting on a tty.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError:
        raise ConfigError(f"{where}: the certificate and key do not load as a pair "
                          "(PEM, unencrypted, and the key must match)") from None


def _seconds(reader: _Reader, name: str, default: float, low: float, high: float) -> float:
    value = float(reader.get(name, (int, float), default, what="a number"))
    if not low <= value <= high:
        raise ConfigError(f"{reader.key(name)}: must be between {low:g} and {high:g} seconds")
    return value


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


def _connector_profile(table: Any, where: str, uris: list[str]) -> SipProfile:
    """The connector's ``[connectors.sip]`` profile (mediafork.sip.profile); secure when
    the srs or a standby says ``secure=true``, as the recorder links decide."""
    from ..sip.uri import split_connector_uri

    secure = any(split_connector_uri(uri)[1] for uri in uris)
    try:
        return parse_profile(table, where, secure=secure)
    except ProfileError as exc:
        raise ConfigError(str(exc)) from None


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
        return _fernet_key(text.strip().encode("ascii", "replace"), "secrets.key_env")
    path = (base / _plain(key_file, "secrets.key_file")).expanduser()
    try:
        return _fernet_key(path.read_bytes().strip(), "secrets.key_file")
    except OSError as exc:
        raise ConfigError(f"secrets.key_file: cannot read ({exc.strerror})") from None


def _fernet_key(key: bytes, where: str) -> bytes:
    """Checked at load even when no value is encrypted yet: a wrong key is found now, not
    when the first ``*_encrypted`` value is added."""
    from cryptography.fernet import Fernet

    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: not a valid Fernet key") from None
    return key


# -- parsing ----------------------------------------------------------------------------------

_TOP_LEVEL = {"api", "storage", "media", "accounts", "edges", "connectors", "callbacks", "sip",
              "secrets", "control_socket", "logging", "media_sources"}
LOG_LEVELS = ("debug", "info", "warning", "error")


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


_ACCOUNT_LIMITS = {"max_calls": DEFAULT_MAX_CALLS, "max_siprecs": DEFAULT_MAX_SIPRECS,
                   "max_recordings": DEFAULT_MAX_RECORDINGS}


def _account_limit(r: _Reader, key: str, default: int) -> int:
    value = r.get(key, int, default)
    if not 1 <= value <= 1_000_000:
        raise ConfigError(f"{r.key(key)}: must be between 1 and 1000000")
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
                                                 "max_request_bytes", "max_connections",
                                                 "max_connections_per_client",
                                                 "header_timeout", "idle_timeout"})
    host, port = _listen(api_r.get("listen", str, "127.0.0.1:8080"), "api.listen")
    public = api_r.get("public_base_url", str)
    if public is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", _plain(
            public, "api.public_base_url")):
        raise ConfigError("api.public_base_url: must be an absolute http(s) URL")
    max_request = api_r.get("max_request_bytes", int, 64 * 1024)
    if not 1024 <= max_request <= 16 * 1024 * 1024:
        raise ConfigError("api.max_request_bytes: must be between 1024 and 16777216")
    api = ApiConfig(host=host, port=port, public_base_url=public, max_request_bytes=max_request,
                    max_connections=_cap(api_r, "max_connections"),
                    max_connections_per_client=_cap(api_r, "max_connections_per_client"),
                    header_timeout=_seconds(api_r, "header_timeout", 10.0, 0.1, 60.0),
                    idle_timeout=_seconds(api_r, "idle_timeout", 60.0, 0.1, 3600.0))

    storage_r = _Reader(_table(root, "storage"), "storage", {"path"})
    storage = StorageConfig(path=(base / _plain(storage_r.get("path", str, "data/mediafork.db"),
                                                "storage.path")))

    media_r = _Reader(_table(root, "media"), "media", {"address", "port_range", "workers",
                                                       "port_reserve", "call_idle_timeout",
                                                       "latch", "relatch_after", "io",
                                                       "tick_us", "srtp_transform"})
    address = _ip(media_r.get("address", str, "127.0.0.1"), "media.address")
    first, last = _port_range(media_r.get("port_range", list, [30000, 39999]),
                              "media.port_range")
    workers = media_r.get("workers", int, 1)
    if not 1 <= workers <= 64:
        raise ConfigError("media.workers: must be between 1 and 64")
    latch = media_r.get("latch", bool, True)
    relatch_after = float(media_r.get("relatch_after", (int, float), 3.0, what="a number"))
    if not 0 <= relatch_after <= 3600:
        raise ConfigError("media.relatch_after: must be between 0 and 3600 seconds")
    media = MediaConfig(address=address, port_range=(first, last), workers=workers,
                        latch=latch, relatch_after=relatch_after)
    reserve = media_r.get("port_reserve", int)
    if reserve is not None and not 0 <= reserve <= media.port_capacity // 2:
        raise ConfigError("media.port_reserve: must be between 0 and half the port range")
    idle = float(media_r.get("call_idle_timeout", (int, float), DEFAULT_CALL_IDLE_TIMEOUT,
                             what="a number"))
    if idle != 0 and not 1 <= idle <= 86400:
        raise ConfigError("media.call_idle_timeout: must be 0 (off) or 1-86400 seconds")
    media = dataclasses.replace(media, port_reserve=reserve, call_idle_timeout=idle)
    io = media_r.get("io", str, "auto")
    if io not in ("auto", "io_uring", "epoll"):
        raise ConfigError('media.io: must be "auto", "io_uring" or "epoll"')
    tick_us = media_r.get("tick_us", int, 0)
    if not 0 <= tick_us <= 1000:
        raise ConfigError("media.tick_us: must be between 0 and 1000 microseconds")
    srtp_transform = media_r.get("srtp_transform", str, "auto")
    if srtp_transform not in ("auto", "libsrtp"):
        raise ConfigError('media.srtp_transform: must be "auto" or "libsrtp"')
    media = dataclasses.replace(media, io=io, tick_us=tick_us, srtp_transform=srtp_transform)

    accounts: list[AccountConfig] = []
    clear_secrets: list[str] = []  # key paths of secrets given in clear (start-up warning)
    seen_accounts: set[str] = set()
    for i, table in enumerate(_array(root, "accounts")):
        r = _Reader(table, f"accounts[{i}]", {"sid", "auth_token", "auth_token_env",
                                              "auth_token_encrypted", *_ACCOUNT_LIMITS})
        sid = r.get("sid", str, required=True)
        if not _ACCOUNT_SID.fullmatch(sid):
            raise ConfigError(f"accounts[{i}].sid: must be 'AC' followed by 32 hex digits")
        if sid in seen_accounts:
            raise ConfigError(f"accounts[{i}].sid: duplicate account")
        seen_accounts.add(sid)
        token = r.secret("auth_token", key, AUTH_TOKEN, required=True)
        assert token is not None
        clear_secrets += r.clear_secrets
        limits = {key: _account_limit(r, key, default)
                  for key, default in _ACCOUNT_LIMITS.items()}
        accounts.append(AccountConfig(sid=sid, auth_token=token, **limits))

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
            "metadata_content_type", "sip", "skip_failover_codes"})
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
        credentials = r.secret("credentials", key, HEADER_VALUE)
        if (header is None) != (credentials is None):
            raise ConfigError(f"{where}.credentials: credentials_header and credentials "
                              "go together")
        digest_user = r.get("digest_username", str)
        if digest_user is not None:  # sent in the Authorization header
            _plain(digest_user, f"{where}.digest_username")
            if not 1 <= len(digest_user) <= 256:
                raise ConfigError(f"{where}.digest_username: must be 1-256 characters")
        digest_password = r.secret("digest_password", key, DIGEST_PASSWORD)
        if (digest_user is None) != (digest_password is None):
            raise ConfigError(f"{where}.digest_password: digest_username and digest_password "
                              "go together")
        content_type = _metadata_content_type(
            r.get("metadata_content_type", str, "application/rs-metadata+xml"),
            f"{where}.metadata_content_type")
        profile = _connector_profile(table.get("sip"), f"{where}.sip", [srs, *standby])
        if header is not None and header.lower() in (n.lower() for n, _ in profile.headers):
            raise ConfigError(f"{where}.sip.headers.{header!r}: already the connector's "
                              "credentials_header")
        clear_secrets += r.clear_secrets
        connectors.append(Connector(
            account_sid=account_sid, unique_name=unique_name, srs=srs,
            standby_srs=tuple(standby), credentials_header=header, credentials=credentials,
            digest_username=digest_user, digest_password=digest_password,
            metadata_content_type=content_type, profile=profile,
            skip_failover_codes=_skip_failover_codes(r, where)))

    cb_r = _Reader(_table(root, "callbacks"), "callbacks",
                   {"timeout", "max_attempts", "retry_for", "backoff_max", "allow", "deny"})
    timeout = float(cb_r.get("timeout", (int, float), 10.0, what="a number"))
    if not 0.1 <= timeout <= 300:
        raise ConfigError("callbacks.timeout: must be between 0.1 and 300 seconds")
    attempts = cb_r.get("max_attempts", int, 0)
    if not 0 <= attempts <= 1000:
        raise ConfigError("callbacks.max_attempts: must be between 0 (no limit) and 1000")
    retry_for = float(cb_r.get("retry_for", (int, float), 3600.0, what="a number"))
    if not 0 <= retry_for <= 7 * 86400:
        raise ConfigError("callbacks.retry_for: must be between 0 and 604800 seconds")
    backoff_max = float(cb_r.get("backoff_max", (int, float), 60.0, what="a number"))
    if not 0.1 <= backoff_max <= 3600:
        raise ConfigError("callbacks.backoff_max: must be between 0.1 and 3600 seconds")
    egress = {name: tuple(cb_r.get(name, list, [])) for name in ("allow", "deny")}
    try:
        EgressPolicy.from_rules(**egress)
    except ValueError as exc:  # "deny[2]: not a CIDR, …"
        raise ConfigError(f"callbacks.{exc}") from None

    sip_table = dict(_table(root, "sip"))
    tls_table = sip_table.pop("tls", {})
    health, max_failovers = _sip_resilience(sip_table)
    if not isinstance(tls_table, dict):
        raise ConfigError("sip.tls: must be a table")
    sip_r = _Reader(sip_table, "sip", {"port", "start_degraded", "max_connections",
                                       "max_connections_per_peer", "tls_handshake_timeout",
                                       "idle_timeout"})
    tls_r = _Reader(tls_table, "sip.tls", {"ca_file", "cert_file", "key_file",
                                           "server_cert_file", "server_key_file"})

    def tls_path(name: str) -> Path | None:
        value = tls_r.get(name, str)
        if value is None:
            return None
        path = base / _plain(value, f"sip.tls.{name}")
        if not path.is_file():
            raise ConfigError(f"sip.tls.{name}: file not found")
        return path

    sip = SipConfig(port=_port(sip_r.get("port", int, 5060), "sip.port", allow_zero=True),
                    tls_ca_file=tls_path("ca_file"), tls_cert_file=tls_path("cert_file"),
                    tls_key_file=tls_path("key_file"),
                    tls_server_cert_file=tls_path("server_cert_file"),
                    tls_server_key_file=tls_path("server_key_file"),
                    start_degraded=sip_r.get("start_degraded", bool, False),
                    max_connections=_cap(sip_r, "max_connections"),
                    max_connections_per_peer=_cap(sip_r, "max_connections_per_peer"),
                    tls_handshake_timeout=_seconds(sip_r, "tls_handshake_timeout", 10.0, 0.1, 60.0),
                    idle_timeout=_seconds(sip_r, "idle_timeout", 30.0, 0.1, 60.0),
                    health=health, max_failovers=max_failovers)
    if (sip.tls_cert_file is None) != (sip.tls_key_file is None):
        raise ConfigError("sip.tls.key_file: cert_file and key_file go together")
    if (sip.tls_server_cert_file is None) != (sip.tls_server_key_file is None):
        raise ConfigError("sip.tls.server_key_file: server_cert_file and server_key_file "
                          "go together")
    for prefix, pair in (("", (sip.tls_cert_file, sip.tls_key_file)),
                         ("server_", (sip.tls_server_cert_file, sip.tls_server_key_file))):
        if pair[0] is not None and pair[1] is not None:
            _check_cert_pair(*pair, f"sip.tls.{prefix}key_file")

    log_r = _Reader(_table(root, "logging"), "logging", {"level"})
    log_level = log_r.get("level", str)
    if log_level is not None and log_level not in LOG_LEVELS:
        raise ConfigError(f"logging.level: must be one of {', '.join(LOG_LEVELS)}")

    socket_path = None
    socket_limits = ControlSocketLimits()
    if "control_socket" in root:
        cs_r = _Reader(_table(root, "control_socket"), "control_socket",
                       {"path", "max_connections", "idle_timeout"})
        socket_path = base / _plain(cs_r.get("path", str, required=True), "control_socket.path")
        socket_limits = ControlSocketLimits(
            max_connections=_cap(cs_r, "max_connections"),
            idle_timeout=_seconds(cs_r, "idle_timeout", 300.0, 0.1, 86400.0))

    return Config(api=api, storage=storage, media=media, accounts=tuple(accounts),
                  edges=tuple(edges), connectors=tuple(connectors),
                  callbacks=CallbackConfig(timeout=timeout, max_attempts=attempts,
                                           retry_for=retry_for, backoff_max=backoff_max,
                                           **egress),
                  sip=sip, control_socket=socket_path, control_socket_limits=socket_limits,
                  media_sources=_media_sources(root), source=source, log_level=log_level,
                  clear_secrets=tuple(clear_secrets))


def _skip_failover_codes(r: _Reader, where: str) -> tuple[int, ...]:
    """A connector's ``skip_failover_codes``: final SIP statuses (300-699) to an INVITE that
    end set-up without trying the standbys."""
    codes = r.get("skip_failover_codes", list, [])
    for j, code in enumerate(codes):
        if isinstance(code, bool) or not isinstance(code, int) or not 300 <= code <= 699:
            raise ConfigError(f"{where}.skip_failover_codes[{j}]: must be a SIP status "
                              "from 300 to 699")
    return tuple(sorted(set(codes)))


def _sip_resilience(sip_table: dict[str, Any]) -> tuple[HealthConfig, int]:
    """``[sip.health]`` and ``[sip.failover]`` (removed from ``sip_table``)."""
    tables = {}
    for name in ("health", "failover"):
        table = sip_table.pop(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"sip.{name}: must be a table")
        tables[name] = table
    h_r = _Reader(tables["health"], "sip.health", {"interval", "timeout", "down_after"})
    interval = _seconds(h_r, "interval", 30.0, 0.0, 3600.0)
    if 0 < interval < 0.1:
        raise ConfigError("sip.health.interval: must be 0 (off) or at least 0.1 seconds")
    down_after = h_r.get("down_after", int, 2)
    if not 1 <= down_after <= 100:
        raise ConfigError("sip.health.down_after: must be between 1 and 100")
    health = HealthConfig(interval=interval, timeout=_seconds(h_r, "timeout", 5.0, 0.1, 60.0),
                          down_after=down_after)
    f_r = _Reader(tables["failover"], "sip.failover", {"max_failovers"})
    max_failovers = f_r.get("max_failovers", int, 2)
    if not 0 <= max_failovers <= 10:
        raise ConfigError("sip.failover.max_failovers: must be between 0 and 10")
    return health, max_failovers


def _media_sources(root: Mapping[str, Any]) -> tuple[MediaSourceConfig, ...]:
    out: list[MediaSourceConfig] = []
    for i, table in enumerate(_array(root, "media_sources")):
        where = f"media_sources[{i}]"
        r = _Reader(table, where, {"name", "kind", "ng", "timeout", "retransmit",
                                   "max_outstanding", "check_interval"})
        name = r.get("name", str, required=True)
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}.name: must be letters, digits, '_', '.', '-'")
        if any(m.name == name for m in out):
            raise ConfigError(f"{where}.name: duplicate media source")
        kind = r.get("kind", str, required=True)
        if kind not in MEDIA_SOURCE_KINDS:
            raise ConfigError(f"{where}.kind: must be one of {', '.join(MEDIA_SOURCE_KINDS)}")
        host, port = _listen(r.get("ng", str, required=True), f"{where}.ng")
        if port == 0:
            raise ConfigError(f"{where}.ng: must be HOST:PORT with a port (1-65535)")
        timeout = _seconds(r, "timeout", 3.0, 0.1, 60)
        retransmit = _seconds(r, "retransmit", 0.5, 0.05, 10)
        if retransmit > timeout:
            raise ConfigError(f"{where}.retransmit: must not exceed timeout")
        outstanding = r.get("max_outstanding", int, 1024)
        if not 1 <= outstanding <= 65536:
            raise ConfigError(f"{where}.max_outstanding: must be between 1 and 65536")
        out.append(MediaSourceConfig(
            name=name, kind=kind, ng=(host, port), timeout=timeout, retransmit=retransmit,
            max_outstanding=outstanding,
            check_interval=_seconds(r, "check_interval", 5.0, 0.5, 3600)))
    return tuple(out)


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
    data = make_private_dir(data_dir)
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
