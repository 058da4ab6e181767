"""docs/openapi.yaml is true: every route is documented and vice versa, responses validate
against the reference schemas, and a bounded schemathesis run finds no server error."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from harness import ACCOUNT, TOKEN, Server

from mediafork.api import ROUTES

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "openapi.yaml"
# The seeds' OpenAPI schemas: shared/ beside the checkout (as CI lays it out), else the
# workplace's copy.
REFERENCE = next((p for p in (
    Path(__file__).resolve().parents[3] / "shared" / "reference",
    Path("/work/shared/reference"),
) if p.is_dir()), Path("/work/shared/reference")) / "twilio_api_v2010_siprec_recording.json"


def _doc() -> dict[str, Any]:
    return yaml.safe_load(DOC.read_text())


def _normalise(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_every_route_is_documented_and_vice_versa(server: Server) -> None:
    documented = {(method.upper(), _normalise(path))
                  for path, item in _doc()["paths"].items()
                  for method in item if method in ("get", "post", "delete", "put", "patch")}
    declared = {(m, _normalise(p)) for m, p in ROUTES}
    registered = set()
    for route in server.app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD for every GET
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        registered.add((route.method, _normalise(path)))
    assert registered == declared
    assert documented == declared


def _resolve(schema: Any, components: dict[str, Any]) -> Any:
    """Inline $refs and turn OpenAPI 3.0 ``nullable`` into JSON Schema."""
    if isinstance(schema, list):
        return [_resolve(s, components) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _resolve(components[schema["$ref"].rsplit("/", 1)[1]], components)
    out = {k: _resolve(v, components) for k, v in schema.items()
           if k not in ("nullable", "format", "description", "example")}
    if schema.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def reference_schema(name: str) -> dict[str, Any]:
    ref = json.loads(REFERENCE.read_text())
    return _resolve(copy.deepcopy(ref["components"]["schemas"][name]),
                    ref["components"]["schemas"])


def doc_schema(name: str) -> dict[str, Any]:
    schemas = _doc()["components"]["schemas"]
    return _resolve(copy.deepcopy(schemas[name]), schemas)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """No field beyond the reference's: a client generated from it must parse ours."""
    return {**schema, "additionalProperties": False, "required": sorted(schema["properties"])}


SIPREC_EXTENSION = ("error", "streams")
"""The only fields a Siprec fetch adds to the reference resource (docs/api.md)."""


def strict_fetched(reference: dict[str, Any]) -> dict[str, Any]:
    """The reference's fields exactly, plus the allow-listed extension as documented."""
    documented = doc_schema("SiprecFetched")["allOf"][1]["properties"]
    assert set(documented) == set(SIPREC_EXTENSION)
    properties = {**reference["properties"], **documented}
    return {**reference, "properties": properties, "additionalProperties": False,
            "required": sorted(properties)}


def test_responses_validate_against_reference(server: Server) -> None:
    siprec_schema = strict(reference_schema("api.v2010.account.call.siprec"))
    recording_schema = strict(reference_schema("api.v2010.account.call.call_recording"))
    call = server.register()
    base = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call['call_sid']}"
    created = server.host_form("POST", base + "/Siprec.json", {"Name": "v1"})
    assert created.status_code == 201
    fetched = server.host("GET", base + "/Siprec/v1.json").json()
    for body in (created.json(),
                 server.host_form("POST", base + "/Siprec/v1.json",
                                  {"Status": "stopped"}).json()):
        jsonschema.validate(body, siprec_schema)
    jsonschema.validate(fetched, strict_fetched(reference_schema("api.v2010.account.call.siprec")))
    jsonschema.validate(server.host("GET", base + "/Siprec/v1.json").json(),
                        strict_fetched(reference_schema("api.v2010.account.call.siprec")))
    listing = server.host("GET", base + "/Siprec.json").json()
    jsonschema.validate(listing, doc_schema("SiprecList"))
    for item in listing["siprec"]:
        jsonschema.validate(item, siprec_schema)

    # Pause and resume are mediafork's extension: the reference enum (in-progress, stopped)
    # gets `paused`, the Recording resource's word, and nothing else; the rest stays strict.
    reference_status = reference_schema("siprec_enum_status")
    assert reference_status["enum"] == ["in-progress", "stopped"]
    extended = copy.deepcopy(siprec_schema)
    extended["properties"]["status"] = {**reference_status,
                                        "enum": [*reference_status["enum"], "paused"]}
    paused_call = server.register()
    paused_base = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{paused_call['call_sid']}"
    assert server.host_form("POST", paused_base + "/Siprec.json",
                            {"Name": "p1"}).status_code == 201
    paused = server.host_form("POST", paused_base + "/Siprec/p1.json", {"Status": "paused"})
    assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(paused.json(), siprec_schema)  # what the extension adds
    # A fetch carries both extensions: the paused status and the `error`/`streams` fields.
    jsonschema.validate(server.host("GET", paused_base + "/Siprec/p1.json").json(),
                        strict_fetched(extended))
    for body in (paused.json(), server.host_form("POST", paused_base + "/Siprec/p1.json",
                                                 {"Status": "in-progress"}).json()):
        jsonschema.validate(body, extended)
    assert set(doc_schema("siprec_enum_status")["enum"]) == set(extended["properties"]["status"]["enum"])
    assert server.host("DELETE", f"/v1/Calls/{paused_call['call_sid']}").status_code == 204

    rec = server.host_form("POST", base + "/Recordings.json", {"RecordingChannels": "dual"})
    assert rec.status_code == 201, rec.text
    jsonschema.validate(rec.json(), recording_schema)
    rec_sid = rec.json()["sid"]
    for body in (server.host("GET", base + f"/Recordings/{rec_sid}.json").json(),
                 server.host_form("POST", base + f"/Recordings/{rec_sid}.json",
                                  {"Status": "paused"}).json()):
        jsonschema.validate(body, recording_schema)
    rec_list = server.host("GET", base + "/Recordings.json").json()
    jsonschema.validate(rec_list, doc_schema("RecordingList"))

    view = server.host("GET", f"/v1/Calls/{call['call_sid']}").json()
    jsonschema.validate(view, doc_schema("HostCall"))
    error = server.host("GET", base + "/Siprec/nope.json").json()
    jsonschema.validate(error, doc_schema("Error"))
    assert server.host("DELETE", f"/v1/Calls/{call['call_sid']}").status_code == 204


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(server: Server, tmp_path: Path) -> None:
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(cli).exists():
        pytest.skip("schemathesis is not installed (add it to the test extras)")
    # A few live calls so that generated requests can hit real resources too.
    for _ in range(2):
        server.register()
    result = subprocess.run(
        [cli, "run", str(DOC), "--url", server.base_url, "--auth", f"{ACCOUNT}:{TOKEN}",
         "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "4242",
         "--generation-deterministic", "--workers", "1", "--max-time", "25",
         "--phases", "examples,coverage,fuzzing", "--no-color",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
