"""plan_reload sorts what a reload changes live and what needs a restart, naming no secret."""

from __future__ import annotations

import copy
from typing import Any

from mediafork.daemon.config import parse_config
from mediafork.daemon.reload import plan_reload

A1, A2 = "AC" + "1" * 32, "AC" + "2" * 32
TOKEN1, TOKEN2, NEW_TOKEN = "token-one-" + "x" * 10, "token-two-" + "y" * 10, "rotated-" + "z" * 12
SECRET, NEW_SECRET = "connector-secret-1", "connector-secret-2"

BASE: dict[str, Any] = {
    "api": {"listen": "127.0.0.1:8080"},
    "media": {"port_range": [30000, 30099]},
    "accounts": [{"sid": A1, "auth_token": TOKEN1}, {"sid": A2, "auth_token": TOKEN2}],
    "edges": [{"name": "ashburn", "address": "127.0.0.1", "default": True}],
    "connectors": [
        {"account_sid": A1, "unique_name": "Gridspace 1", "srs": "sip:rec@127.0.0.1:5070",
         "credentials_header": "X-Token", "credentials": SECRET},
        {"account_sid": A2, "unique_name": "Verint", "srs": "sip:rec@127.0.0.1:5072"},
    ],
}


def _config(doc: dict[str, Any]):
    return parse_config(doc, ".")


def test_identical_configs_plan_nothing() -> None:
    plan = plan_reload(_config(BASE), _config(copy.deepcopy(BASE)))
    assert plan.empty and plan.summary() == "no changes"


def test_live_changes_are_named_without_secrets() -> None:
    new = copy.deepcopy(BASE)
    new["accounts"][0]["auth_token"] = NEW_TOKEN                       # rotated token
    new["accounts"].pop(1)                                              # account removed
    new["accounts"].append({"sid": "AC" + "3" * 32, "auth_token": "t" * 20})
    new["connectors"] = [dict(new["connectors"][0], credentials=NEW_SECRET),
                         {"account_sid": "AC" + "3" * 32, "unique_name": "NICE",
                          "srs": "sip:nice@127.0.0.1:5080"}]
    new["edges"].append({"name": "dallas", "address": "127.0.0.2"})
    new["callbacks"] = {"timeout": 3.0}
    new["logging"] = {"level": "debug"}
    plan = plan_reload(_config(BASE), _config(new))
    assert set(plan.added) == {"account AC" + "3" * 32, "connector 'NICE' of AC" + "3" * 32,
                               "edge dallas"}
    assert set(plan.removed) == {f"account {A2}", f"connector 'Verint' of {A2}"}
    assert set(plan.changed) == {f"account {A1}", f"connector 'Gridspace 1' of {A1}",
                                 "callbacks", "log level"}
    assert plan.restart_required == ()
    text = plan.summary()
    for secret in (TOKEN1, TOKEN2, NEW_TOKEN, SECRET, NEW_SECRET):
        assert secret not in text and secret not in repr(plan)


def test_what_only_a_restart_changes_is_listed_apart() -> None:
    new = copy.deepcopy(BASE)
    new["api"] = {"listen": "127.0.0.1:9090"}
    new["media"] = {"port_range": [31000, 31099]}
    new["sip"] = {"port": 5062}
    plan = plan_reload(_config(BASE), _config(new))
    assert plan.restart_required == ("api", "media", "sip")
    assert not plan.added and not plan.changed and not plan.removed
    assert "needs a restart (kept as before): api, media, sip" in plan.summary()


def test_a_profile_change_is_a_live_connector_change_naming_no_header_value() -> None:
    """[connectors.sip] is part of the connector: a reload applies it to new Siprecs."""
    new = copy.deepcopy(BASE)
    new["connectors"][1] = dict(new["connectors"][1], sip={
        "headers": {"X-Tenant": NEW_SECRET}, "parameters_as": "both", "setup_timeout": 5})
    old_config, new_config = _config(BASE), _config(new)
    plan = plan_reload(old_config, new_config)
    assert plan.changed == (f"connector 'Verint' of {A2}",) and plan.restart_required == ()
    assert NEW_SECRET not in plan.summary() and NEW_SECRET not in repr(plan)
    assert new_config.connectors_for(A2)["Verint"].profile.setup_timeout == 5.0
    assert plan_reload(new_config, _config(copy.deepcopy(new))).empty
