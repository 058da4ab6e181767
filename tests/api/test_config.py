"""TOML config: every invalid value names its key path; secrets never appear in errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mediafork.daemon.config import (
    ConfigError,
    default_config,
    encrypt_secret,
    generate_secret_key,
    load_config,
    parse_config,
)

AC = "AC" + "a1" * 16
SECRET = "very-secret-connector-credential"


def base(**extra: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "accounts": [{"sid": AC, "auth_token": "t" * 32}],
        "edges": [{"name": "ashburn", "address": "127.0.0.2", "default": True}],
        "connectors": [{"account_sid": AC, "unique_name": "Gridspace_1",
                        "srs": "sip:recorder@127.0.0.1:5070;secure=true&edge=ashburn",
                        "standby_srs": ["sip:recorder@127.0.0.1:5072"],
                        "credentials_header": "X-Auth-Token", "credentials": SECRET}],
    }
    doc.update(extra)
    return doc


def test_architecture_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(f"""
[api]
listen = "127.0.0.1:8080"
[storage]
path = "data/mediafork.db"
[media]
address = "127.0.0.1"
port_range = [30000, 39999]
workers = 3
[[accounts]]
sid = "{AC}"
auth_token = "{'t' * 32}"
[[edges]]
name = "ashburn"
address = "127.0.0.2"
default = true
[[connectors]]
account_sid = "{AC}"
unique_name = "Gridspace_1"
srs = "sip:recorder@127.0.0.1:5070;secure=true&edge=ashburn"
standby_srs = ["sip:recorder@127.0.0.1:5072"]
credentials_header = "X-Auth-Token"
credentials = "{SECRET}"
[callbacks]
timeout = 5
max_attempts = 3
[sip]
port = 5070
""")
    config = load_config(path)
    assert config.api.port == 8080 and config.storage.path == tmp_path / "data/mediafork.db"
    assert config.media.port_range == (30000, 39999) and config.media.workers == 3
    [connector] = config.connectors
    assert connector.credentials == SECRET and connector.standby_srs == (
        "sip:recorder@127.0.0.1:5072",)
    assert config.connectors_for(AC)["Gridspace_1"] is connector
    assert config.callbacks.timeout == 5.0 and config.sip.port == 5070
    assert SECRET not in repr(config) and "t" * 32 not in repr(config)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["connectors"][0].update(srs="http://nope"), "connectors[0].srs: not a SIP URI"),
    (lambda d: d["connectors"][0].update(srs="sip:r@h;edge=mars"),
     "connectors[0].srs: edge 'mars' is not a configured edge"),
    (lambda d: d["connectors"][0].update(standby_srs=[5]), "connectors[0].standby_srs[0]"),
    (lambda d: d["connectors"][0].update(account_sid="AC" + "0" * 32),
     "connectors[0].account_sid: not a configured account"),
    (lambda d: d["accounts"][0].update(sid="nope"), "accounts[0].sid"),
    (lambda d: d["accounts"][0].update(auth_token="short"), "accounts[0].auth_token"),
    (lambda d: d.update(api={"listen": "localhost"}), "api.listen"),
    (lambda d: d.update(media={"port_range": [5, 2]}), "media.port_range"),
    (lambda d: d.update(media={"workers": 0}), "media.workers: must be between 1 and 64"),
    (lambda d: d.update(media={"workers": "2"}), "media.workers"),
    (lambda d: d.update(media={"io": "kqueue"}), 'media.io: must be "auto", "io_uring" or "epoll"'),
    (lambda d: d.update(media={"tick_us": 5000}), "media.tick_us: must be between 0 and 1000"),
    (lambda d: d.update(media={"tick_us": True}), "media.tick_us"),
    (lambda d: d.update(media={"srtp_transform": "openssl"}),
     'media.srtp_transform: must be "auto" or "libsrtp"'),
    (lambda d: d.update(media={"address": "nowhere"}), "media.address: not an IP address"),
    (lambda d: d.update(callbacks={"timeout": "soon"}), "callbacks.timeout"),
    (lambda d: d.update(callbacks={"max_attempts": -1}), "callbacks.max_attempts"),
    (lambda d: d.update(callbacks={"retry_for": -5}), "callbacks.retry_for"),
    (lambda d: d.update(callbacks={"backoff_max": 0}), "callbacks.backoff_max"),
    (lambda d: d.update(sip={"port": True}), "sip.port"),
    (lambda d: d.update(bogus=1), "bogus: unknown key"),
    (lambda d: d["connectors"][0].update(credentials_env="NOT_SET_ANYWHERE_42"),
     "connectors[0].credentials: give only one of"),
    (lambda d: d["connectors"][0].pop("credentials_header"), "connectors[0].credentials"),
    (lambda d: d["connectors"].append(dict(d["connectors"][0])),
     "connectors[1].unique_name: duplicate"),
    (lambda d: d["connectors"][0].update(credentials_encrypted="gAAAA"),
     "connectors[0].credentials: give only one of"),
])
def test_invalid_values_name_the_key(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = base()
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert str(info.value).startswith(message), str(info.value)
    assert SECRET not in str(info.value) and "t" * 32 not in str(info.value)


def test_env_and_encrypted_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_secret_key()
    (tmp_path / "key").write_bytes(key)
    token = encrypt_secret(key, SECRET)
    assert SECRET not in token
    monkeypatch.setenv("MF_DIGEST", "digest-pass")
    doc = base(secrets={"key_file": "key"})
    connector = doc["connectors"][0]  # type: ignore[index]
    del connector["credentials"]
    connector.update(credentials_encrypted=token, digest_username="u",
                     digest_password_env="MF_DIGEST")
    config = parse_config(doc, tmp_path)
    assert config.connectors[0].credentials == SECRET
    assert config.connectors[0].digest_password == "digest-pass"
    # wrong key: error names the key path, not the ciphertext
    (tmp_path / "key").write_bytes(generate_secret_key())
    with pytest.raises(ConfigError) as info:
        parse_config(doc, tmp_path)
    assert str(info.value) == ("connectors[0].credentials_encrypted: cannot be decrypted "
                               "with the configured key")
    monkeypatch.delenv("MF_DIGEST")
    (tmp_path / "key").write_bytes(key)
    with pytest.raises(ConfigError, match=r"digest_password_env: environment variable MF_DIGEST"):
        parse_config(doc, tmp_path)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[api\nlisten=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_default_config_generates_a_private_token_once(tmp_path: Path) -> None:
    first = default_config(tmp_path / "data")
    assert first.generated_token_file is not None
    assert stat.S_IMODE(os.stat(first.generated_token_file).st_mode) == 0o600
    [account] = first.accounts
    assert first.generated_token_file.read_text().strip() == f"{account.sid}:{account.auth_token}"
    assert first.api.host == "127.0.0.1" and first.storage.path.parent == tmp_path / "data"
    again = default_config(tmp_path / "data")
    assert again.generated_token_file is None and again.accounts == first.accounts
    assert account.auth_token not in repr(first)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["connectors"][0].update(skip_failover_codes=[403, 200]),
     "connectors[0].skip_failover_codes[1]: must be a SIP status from 300 to 699"),
    (lambda d: d["connectors"][0].update(skip_failover_codes=[True]),
     "connectors[0].skip_failover_codes[0]"),
    (lambda d: d["connectors"][0].update(skip_failover_codes="403"),
     "connectors[0].skip_failover_codes: must be"),
    (lambda d: d.update(sip={"health": {"interval": -1}}), "sip.health.interval"),
    (lambda d: d.update(sip={"health": {"interval": 0.01}}), "sip.health.interval: must be 0"),
    (lambda d: d.update(sip={"health": {"timeout": 0}}), "sip.health.timeout"),
    (lambda d: d.update(sip={"health": {"down_after": 0}}), "sip.health.down_after"),
    (lambda d: d.update(sip={"health": {"often": 1}}), "sip.health.often: unknown key"),
    (lambda d: d.update(sip={"health": 5}), "sip.health: must be a table"),
    (lambda d: d.update(sip={"failover": {"max_failovers": 11}}), "sip.failover.max_failovers"),
])
def test_resilience_keys_are_checked(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = base()
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert str(info.value).startswith(message), str(info.value)


def test_resilience_keys_and_their_defaults() -> None:
    config = parse_config(base())
    assert config.connectors[0].skip_failover_codes == ()
    assert (config.sip.health.interval, config.sip.health.timeout,
            config.sip.health.down_after, config.sip.max_failovers) == (30.0, 5.0, 2, 2)
    doc = base(sip={"health": {"interval": 0, "timeout": 2, "down_after": 3},
                    "failover": {"max_failovers": 0}})
    doc["connectors"][0]["skip_failover_codes"] = [404, 403, 404]  # type: ignore[index]
    config = parse_config(doc)
    assert config.connectors[0].skip_failover_codes == (403, 404)
    assert not config.sip.health.enabled and config.sip.health.down_after == 3
    assert config.sip.max_failovers == 0
