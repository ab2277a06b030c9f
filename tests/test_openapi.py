"""The API's description: every field documented, examples, the event stream, auth, self-hosted docs pages."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from serve_app.ingress.api import create_app
from serve_app.ingress.auth import API_KEYS_ENV
from serve_app.ingress.frontend import Frontend
from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.pipeline.registry import CATALOG
from serve_app.storage import LocalStore

from .conftest import TEST_MODEL


class UnusedGenerator:
    async def generate(self, plan):
        raise AssertionError("the description needs no generation")

    async def ready(self) -> bool:
        return True


def app_client(tmp_path) -> TestClient:
    planner = Planner(PresetBook.load(), served_models=[TEST_MODEL], default_model=TEST_MODEL)
    return TestClient(create_app(Frontend(planner, UnusedGenerator(), LocalStore(tmp_path))))


@pytest.fixture
def schema(tmp_path) -> dict:
    return app_client(tmp_path).get("/openapi.json").json()


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def undocumented(schema: dict) -> list[str]:
    """Every property of every model, every parameter and every operation without a description."""
    missing = []
    for name, model in schema["components"]["schemas"].items():
        if not model.get("description"):
            missing.append(name)
        missing += [
            f"{name}.{field}" for field, spec in model.get("properties", {}).items() if not spec.get("description")
        ]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if not operation.get("description"):
                missing.append(f"{method.upper()} {path}")
            missing += [
                f"{method.upper()} {path} {parameter['name']}"
                for parameter in operation.get("parameters", [])
                if not parameter.get("description")
            ]
            missing += [
                f"{method.upper()} {path} -> {status}"
                for status, response in operation["responses"].items()
                if not response.get("description") or response["description"] == "Successful Response"
            ]
    return missing


def test_every_field_parameter_operation_and_response_is_described(schema):
    assert undocumented(schema) == []


def test_the_walker_finds_an_undocumented_field(schema):
    schema["components"]["schemas"]["OutputFile"]["properties"]["seed"].pop("description")
    assert undocumented(schema) == ["OutputFile.seed"]


def test_each_preset_is_a_request_example_and_each_json_response_has_one(schema):
    presets = set(PresetBook.load().names())
    for path in ("/generate", "/jobs"):
        examples = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
        assert {example["value"].get("preset") for example in examples.values()} >= presets
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                body = response.get("content", {}).get("application/json")
                if body is None:
                    continue
                model = resolve(schema, body.get("schema", {}).get("items", body.get("schema", {})))
                assert "example" in body or "examples" in body or "examples" in model, (method, path, status)


def test_the_event_stream_is_documented_as_server_sent_events(schema):
    responses = schema["paths"]["/jobs/{job_id}/events"]["get"]["responses"]
    assert list(responses["200"]["content"]) == ["text/event-stream"]
    assert responses["200"]["content"]["text/event-stream"]["example"].startswith("data: {")
    assert all(list(responses[status]["content"]) == ["application/json"] for status in ("401", "404", "503"))


def test_outputs_document_ranges_and_head(schema):
    get, head = schema["paths"]["/outputs/{key}"]["get"], schema["paths"]["/outputs/{key}"]["head"]
    assert {"200", "206", "416"} <= get["responses"].keys()
    assert "audio/wav" in get["responses"]["206"]["content"] and "content" not in head["responses"]["200"]


def test_audio_duration_has_the_longest_model_duration_as_its_maximum(schema):
    (number, _) = schema["components"]["schemas"]["GenerateRequest"]["properties"]["audio_duration"]["anyOf"]
    assert number["maximum"] == max(spec.max_duration_s for spec in CATALOG.values())


def test_a_bearer_scheme_is_documented_only_when_keys_are_configured(tmp_path, monkeypatch):
    open_schema = app_client(tmp_path).get("/openapi.json").json()
    assert "securitySchemes" not in open_schema.get("components", {})
    monkeypatch.setenv(API_KEYS_ENV, "k1")
    client = app_client(tmp_path)
    locked = client.get("/openapi.json").json()  # the description itself stays readable
    (scheme,) = locked["components"]["securitySchemes"].values()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert locked["paths"]["/generate"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in locked["paths"]["/health"]["get"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_server_itself(tmp_path, page):
    client = app_client(tmp_path)
    html = client.get(page)
    assert html.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert assets and all(asset.startswith("/docs/assets/") for asset in assets), assets
    assert "fonts.googleapis" not in html.text
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset
