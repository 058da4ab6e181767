"""The status-callback egress policy (mediafork.control.egress): pure decisions, no sockets."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from mediafork.control.egress import EgressPolicy, Listener, parse_ip_host, parse_rule
from mediafork.daemon.config import ConfigError, parse_config

DEFAULT = EgressPolicy()


def refused(policy: EgressPolicy, url: str) -> str:
    decision = policy.check_url(url)
    assert not decision.allowed, url
    return decision.reason


@pytest.mark.parametrize(
    "host,address",
    [
        ("0", "0.0.0.0"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("[::ffff:a9fe:a9fe]", "169.254.169.254"),
        ("fd00:ec2::254", "fd00:ec2::254"),
    ],
)
def test_numeric_hosts_are_read_as_inet_aton_reads_them(host, address):
    assert parse_ip_host(host) == ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "1.2.3.4.5", "256.1", "08", "0x7g",
                                  "4294967296", "127.0.0.256", "localhost", "1e3", ""])
def test_names_are_not_addresses(host):
    assert parse_ip_host(host) is None


@pytest.mark.parametrize(
    "url,why",
    [
        ("http://0/", "0.0.0.0 is an unspecified address"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://2852039166/", "cloud metadata"),
        ("http://0xa9fea9fe/", "cloud metadata"),
        ("http://169.254.43518/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://[64:ff9b::a9fe:a9fe]/", "embeds 169.254.169.254"),
        ("http://[2002:a9fe:a9fe::]/", "embeds 169.254.169.254"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://100.100.100.200/", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fe80::1%25eth0]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://255.255.255.255/", "broadcast"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata service name"),
        ("http://METADATA.Google.Internal./", "cloud metadata service name"),
        ("http://metadata/", "cloud metadata service name"),
        ("http://instance-data/latest/", "cloud metadata service name"),
        ("http://user:pass@example.com/cb", "credentials"),
        ("http://user@example.com/cb", "credentials"),
        ("https://:pw@example.com/cb", "credentials"),
    ],
)
def test_denied_by_default(url, why):
    assert why in refused(DEFAULT, url)


@pytest.mark.parametrize("url", ["http://2130706433/", "http://0x7f000001/", "http://0x7f.1/",
                                 "http://017700000001/", "http://127.1/"])
def test_loopback_in_another_form_is_recognised_and_must_be_written_plainly(url):
    # Loopback is allowed by default, but the HTTP client would refuse these forms: say so.
    assert "127.0.0.1 written in a non-standard form" in refused(DEFAULT, url)
    # and with loopback denied they are denied as the address they are
    closed = EgressPolicy.from_rules(deny=["127.0.0.0/8"])
    assert refused(closed, url) == "127.0.0.1 is in the [callbacks] deny entry 127.0.0.0/8"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/cb", "http://[::1]:9000/cb",
                                 "http://10.1.2.3/cb", "http://192.168.0.10:8443/",
                                 "https://app.example.com/cb?x=1", "http://localhost:3000/",
                                 "http://[2001:db8::1]/", "http://8.8.8.8/"])
def test_allowed_by_default(url):
    assert DEFAULT.check_url(url).allowed


def test_deny_wins_over_the_default_allow_and_a_longer_allow_opens_a_subnet():
    policy = EgressPolicy.from_rules(allow=["10.20.0.0/16"], deny=["10.0.0.0/8"])
    assert "deny entry 10.0.0.0/8" in refused(policy, "http://10.1.2.3/cb")
    assert policy.check_url("http://10.20.7.8/cb").allowed


def test_a_longer_deny_closes_part_of_an_allow_and_deny_wins_a_tie():
    policy = EgressPolicy.from_rules(allow=["10.0.0.0/8", "192.168.1.0/24"],
                                     deny=["10.20.5.0/24", "192.168.1.0/24"])
    assert policy.check_url("http://10.20.6.1/").allowed
    assert "10.20.5.0/24" in refused(policy, "http://10.20.5.1/")
    assert "192.168.1.0/24" in refused(policy, "http://192.168.1.1/")


def test_allow_can_open_part_of_link_local_but_never_metadata():
    policy = EgressPolicy.from_rules(allow=["169.254.0.0/16", "fe80::/10", "0.0.0.0/0", "::/0"])
    assert policy.check_url("http://169.254.10.1/").allowed
    assert policy.check_url("http://[fe80::1]/").allowed
    assert "cloud metadata" in refused(policy, "http://169.254.169.254/")
    assert "unspecified" in refused(policy, "http://0.0.0.0/")
    assert "multicast" in refused(policy, "http://239.1.1.1/")


def test_loopback_can_be_denied_for_both_families():
    policy = EgressPolicy.from_rules(deny=["127.0.0.0/8", "::1/128"])
    assert "127.0.0.0/8" in refused(policy, "http://127.0.0.1:9000/")
    assert "::1/128" in refused(policy, "http://[::1]:9000/")
    assert "127.0.0.0/8" in refused(policy, "http://[::ffff:127.0.0.1]:9000/")


def test_name_rules_exact_beats_wildcard_and_deny_wins_a_tie():
    policy = EgressPolicy.from_rules(allow=["hooks.corp.example", "*.open.corp.example"],
                                     deny=["*.corp.example", "bad.open.corp.example"])
    assert "*.corp.example" in refused(policy, "https://x.corp.example/")
    assert policy.check_url("https://hooks.corp.example/").allowed
    assert policy.check_url("https://a.open.corp.example/").allowed  # longer suffix wins
    assert "bad.open.corp.example" in refused(policy, "https://bad.open.corp.example/")
    # a wildcard does not match the bare suffix
    assert policy.check_url("https://corp.example/").allowed
    tie = EgressPolicy.from_rules(allow=["*.x.example"], deny=["*.x.example"])
    assert not tie.check_url("https://a.x.example/").allowed


def test_an_allowed_name_is_trusted_for_its_addresses_except_the_never_rules():
    policy = EgressPolicy.from_rules(allow=["app.internal"], deny=["10.0.0.0/8"])
    trusted = policy.check_name("app.internal.")
    assert trusted.allowed and trusted.trusted_name
    assert policy.check_address(ip_address("10.9.9.9"), 80, trusted_name=True).allowed
    assert not policy.check_address(ip_address("10.9.9.9"), 80).allowed
    assert not policy.check_address(ip_address("169.254.169.254"), 80, trusted_name=True).allowed
    # a metadata name cannot be opened by allow
    assert not EgressPolicy.from_rules(allow=["metadata"]).check_name("metadata").allowed


def test_own_listeners_exact_address_and_port():
    policy = DEFAULT.with_listeners([Listener.of("127.0.0.1", 8080), Listener.of("::1", 8080)])
    assert "127.0.0.1:8080 is one of mediafork's own" in refused(policy, "http://127.0.0.1:8080/")
    assert "[::1]:8080" in refused(policy, "http://[::1]:8080/v1/Calls")
    assert "own" in refused(policy, "http://[::ffff:127.0.0.1]:8080/")
    assert policy.check_url("http://127.0.0.1:8081/").allowed
    assert policy.check_url("http://127.0.0.2:8080/").allowed  # another address, not ours
    # the default port counts: http://127.0.0.1/ is port 80
    at_80 = DEFAULT.with_listeners([Listener.of("127.0.0.1", 80)])
    assert "own" in refused(at_80, "http://127.0.0.1/")
    assert at_80.check_url("https://127.0.0.1/").allowed  # 443


def test_a_wildcard_listener_covers_every_local_address_on_its_port():
    local = {ip_address("10.0.0.5")}
    policy = DEFAULT.with_listeners([Listener.of("0.0.0.0", 5060)],
                                    is_local=lambda address: address in local)
    assert "own" in refused(policy, "http://10.0.0.5:5060/")
    assert "own" in refused(policy, "http://127.0.0.9:5060/")  # loopback is always local
    assert policy.check_url("http://10.0.0.6:5060/").allowed  # another machine
    assert policy.check_url("http://10.0.0.5:5061/").allowed
    # with_listeners adds: earlier listeners stay refused
    more = policy.with_listeners([Listener.of("127.0.0.1", 8080)])
    assert not more.check_url("http://10.0.0.5:5060/").allowed
    assert not more.check_url("http://127.0.0.1:8080/").allowed


def test_reasons_never_carry_paths_queries_or_credentials():
    policy = EgressPolicy.from_rules(deny=["127.0.0.0/8"])
    for url in ("http://127.0.0.1:1/secret-path?token=query-secret",
                "http://hookuser:pw-secret@example.com/secret-path?token=query-secret"):
        reason = refused(policy, url)
        for secret in ("secret-path", "query-secret", "pw-secret", "hookuser"):
            assert secret not in reason


@pytest.mark.parametrize("entry,kind", [("10.0.0.0/8", "net"), ("fd00::/8", "net"),
                                        ("192.0.2.7", "net"), ("::1", "net"),
                                        ("Hooks.Example.COM.", "name"),
                                        ("*.example.com", "name")])
def test_rule_entries(entry, kind):
    rule = parse_rule(entry)
    assert isinstance(rule, str) == (kind == "name")
    if kind == "name":
        assert rule == entry.lower().rstrip(".")


@pytest.mark.parametrize("entry", ["", "  ", "10.0.0.1/8", "10.0.0.0/33", "*", "*.",
                                   "a..b", "exa mple.com", "-bad.example", "http://x/", "127.1"])
def test_bad_rule_entries(entry):
    with pytest.raises(ValueError):
        parse_rule(entry)


def test_config_keys_are_read_and_bad_entries_name_their_key(tmp_path: Path):
    config = parse_config({"callbacks": {"allow": ["10.20.0.0/16", "*.apps.internal"],
                                         "deny": ["10.0.0.0/8"]}}, tmp_path)
    assert config.callbacks.allow == ("10.20.0.0/16", "*.apps.internal")
    policy = config.callbacks.egress_policy()
    assert policy.check_url("http://10.20.0.1/").allowed
    assert not policy.check_url("http://10.30.0.1/").allowed
    assert parse_config({}, tmp_path).callbacks.egress_policy() == EgressPolicy()
    with pytest.raises(ConfigError, match=r"^callbacks\.deny\[1\]: not a CIDR"):
        parse_config({"callbacks": {"deny": ["10.0.0.0/8", "10.0.0.1/8"]}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^callbacks\.allow\[0\]: must be a non-empty"):
        parse_config({"callbacks": {"allow": [7]}}, tmp_path)
    with pytest.raises(ConfigError, match=r"^callbacks\.allow: must be an array"):
        parse_config({"callbacks": {"allow": "10.0.0.0/8"}}, tmp_path)
