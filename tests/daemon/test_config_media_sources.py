"""``[[media_sources]]``: parsed into MediaSourceConfig, every bad value refused naming its
key path."""

from __future__ import annotations

import tomllib

import pytest

from mediafork.daemon.config import ConfigError, MediaSourceConfig, parse_config


def parse(text: str):
    return parse_config(tomllib.loads(text))


def test_minimal_rtpengine_source_gets_the_defaults():
    config = parse('[[media_sources]]\nname = "rtpengine1"\nkind = "rtpengine"\n'
                   'ng = "127.0.0.1:22222"\n')
    assert config.media_sources == (MediaSourceConfig(
        name="rtpengine1", kind="rtpengine", ng=("127.0.0.1", 22222)),)
    assert config.media_source("rtpengine1") is config.media_sources[0]
    assert config.media_source("other") is None
    assert parse("").media_sources == ()


def test_every_key():
    config = parse('[[media_sources]]\nname = "a"\nkind = "rtpengine"\nng = "[::1]:2223"\n'
                   "timeout = 2\nretransmit = 0.25\nmax_outstanding = 64\n"
                   "check_interval = 1.5\n"
                   '[[media_sources]]\nname = "b"\nkind = "rtpengine"\nng = "10.0.0.7:22222"\n')
    a, b = config.media_sources
    assert (a.ng, a.timeout, a.retransmit, a.max_outstanding, a.check_interval) == (
        ("::1", 2223), 2.0, 0.25, 64, 1.5)
    assert b.ng == ("10.0.0.7", 22222)


GOOD = {"name": '"r1"', "kind": '"rtpengine"', "ng": '"127.0.0.1:22222"'}


@pytest.mark.parametrize(("change", "key"), [
    ({"name": None}, "media_sources[0].name: required"),
    ({"name": '"has space"'}, "media_sources[0].name"),
    ({"kind": '"freeswitch"'}, "media_sources[0].kind: must be one of rtpengine"),
    ({"kind": None}, "media_sources[0].kind: required"),
    ({"ng": '"rtpengine.local:22222"'}, "media_sources[0].ng: not an IP address"),
    ({"ng": '"127.0.0.1"'}, "media_sources[0].ng: must be HOST:PORT"),
    ({"ng": '"127.0.0.1:0"'}, "media_sources[0].ng"),
    ({"ng": "22222"}, "media_sources[0].ng: must be a string"),
    ({"timeout": "0"}, "media_sources[0].timeout"),
    ({"timeout": "true"}, "media_sources[0].timeout: must be a number"),
    ({"retransmit": "5", "timeout": "1"}, "media_sources[0].retransmit: must not exceed"),
    ({"max_outstanding": "0"}, "media_sources[0].max_outstanding"),
    ({"check_interval": "0.1"}, "media_sources[0].check_interval"),
    ({"listen_ng": '"x"'}, "media_sources[0].listen_ng: unknown key"),
])
def test_bad_values_name_their_key(change, key):
    keys = {**GOOD, **change}
    body = "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)
    with pytest.raises(ConfigError) as caught:
        parse("[[media_sources]]\n" + body)
    assert str(caught.value).startswith(key.split(":")[0])
    assert key in str(caught.value)


def test_duplicate_names_and_wrong_shape():
    entry = '[[media_sources]]\nname = "r1"\nkind = "rtpengine"\nng = "127.0.0.1:1"\n'
    with pytest.raises(ConfigError, match=r"media_sources\[1\].name: duplicate"):
        parse(entry + entry)
    with pytest.raises(ConfigError, match="media_sources: must be an array of tables"):
        parse('[media_sources]\nname = "r1"\n')
