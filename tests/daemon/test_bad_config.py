"""A bad config is refused: exit code 2, the key path named, nothing listening, no secret
echoed back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import ACCOUNT, TOKEN, DaemonProcess, free_tcp_port, is_listening

SECRET = "very-secret-value-" + "z5" * 8

GOOD_ACCOUNT = f'[[accounts]]\nsid = "{ACCOUNT}"\nauth_token = "{TOKEN}"\n'


def _connector(**keys: str) -> str:
    body = "\n".join(f'{k} = "{v}"' for k, v in {"account_sid": ACCOUNT, "unique_name": "Default",
                                                  "srs": "sip:recorder@127.0.0.1:5070",
                                                  **keys}.items())
    return f"[[connectors]]\n{body}\n"


BASE = '[api]\nlisten = "{listen}"\n' + GOOD_ACCOUNT

# (case, the whole TOML file with {listen} for the API address, the key path to be named)
CASES = [
    ("bad port", BASE + "[sip]\nport = 70000\n", "sip.port"),
    ("bad listen port", BASE.replace("{listen}", "127.0.0.1:99999"), "api.listen"),
    ("unknown key", BASE + '[media]\naddress = "127.0.0.1"\nports = [1, 2]\n', "media.ports"),
    ("unknown table", BASE + "[recorder]\nport = 1\n", "recorder"),
    ("non-SIP connector", BASE + _connector(srs=f"http://user:{SECRET}@rec.example/"),
     "connectors[0].srs"),
    ("unknown edge", BASE + '[[edges]]\nname = "local"\naddress = "127.0.0.1"\n'
     + _connector(srs="sip:recorder@127.0.0.1:5070;edge=nowhere"), "connectors[0].srs"),
    ("missing credentials env", BASE + _connector(
        credentials_header="X-Auth", credentials_env="MEDIAFORK_TEST_UNSET_CRED"),
     "connectors[0].credentials_env"),
    ("credentials without header", BASE + _connector(credentials=SECRET),
     "connectors[0].credentials"),
    ("short token", BASE + f'[[accounts]]\nsid = "{"AC" + "e5" * 16}"\nauth_token = "short1"\n',
     "accounts[1].auth_token"),
    ("not TOML", f'[api\nlisten = "{SECRET}"\n', "not valid TOML"),
    ("profile header with CR/LF", BASE + _connector()
     + f'[connectors.sip.headers]\nX-Tenant = "{SECRET}\\r\\nVia: x"\n',
     "connectors[0].sip.headers.'X-Tenant'"),
]


@pytest.mark.parametrize(("toml", "key"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_exits_2_naming_the_key(
        tmp_path: Path, spawn: Callable[..., DaemonProcess], toml: str, key: str) -> None:
    port = free_tcp_port()
    path = tmp_path / "bad.toml"
    path.write_text(toml.replace("{listen}", f"127.0.0.1:{port}"))

    # The variable is set but empty: "not set" must mean that too.
    daemon = spawn(["--config", str(path)], env={"MEDIAFORK_TEST_UNSET_CRED": ""})
    proc = daemon.spawn()
    assert proc.wait(timeout=15) == 2
    err = daemon.stderr
    assert "invalid configuration" in err and key in err, err
    assert SECRET not in err and TOKEN not in err
    assert daemon.stdout == ""  # nothing announced, nothing generated
    assert not is_listening(port)
    assert not (tmp_path / "data").exists()  # nothing started: not even the database


def test_bad_listen_flag_exits_2(tmp_path: Path, spawn: Callable[..., DaemonProcess]) -> None:
    daemon = spawn(["--data", str(tmp_path / "d"), "--no-recorder", "--listen", "nowhere"])
    assert daemon.spawn().wait(timeout=15) == 2
    assert "--listen" in daemon.stderr
