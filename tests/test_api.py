"""The HTTP layer in-process: error mapping, auth, and what the ingress does with generator failures."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi.testclient import TestClient
from ray.exceptions import ActorDiedError, RayTaskError
from ray.serve.exceptions import BackPressureError

from deployments.ingress import ServeGeneratorClient
from serve_app.audio import content_type, encode_audio
from serve_app.errors import InvalidRequest, Unavailable
from serve_app.ingress.api import create_app
from serve_app.ingress.auth import API_KEYS_ENV, ApiKeys, AuthConfigError
from serve_app.ingress.frontend import Frontend
from serve_app.ingress.planner import Planner
from serve_app.ingress.presets import PresetBook
from serve_app.storage import LocalStore, write_output

from .conftest import TEST_MODEL


class FakeResponse:
    """A handle call's response: taken by a replica (unless ``never_accepted``), then ``outcome``
    (returned, or raised if an exception). A full queue fails at acceptance, as in Serve."""

    def __init__(self, outcome: object, never_accepted: bool = False) -> None:
        self.outcome = outcome
        self.never_accepted = never_accepted
        self.cancelled = False

    async def _to_object_ref(self) -> None:
        if self.never_accepted:
            await asyncio.Event().wait()
        if isinstance(self.outcome, BackPressureError):
            raise self.outcome

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome
        yield  # a generator, so awaiting works


class FakeHandle:
    """A generator handle whose calls have ``outcomes`` in turn (the last one repeats)."""

    deployment_name = "Generator"

    def __init__(self, *outcomes: object, never_accepted: bool = False) -> None:
        self.outcomes = list(outcomes)
        self.never_accepted = never_accepted
        self.responses: list[FakeResponse] = []
        self.generate = self

    def remote(self, plan):
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        self.responses.append(FakeResponse(outcome, self.never_accepted))
        return self.responses[-1]


def client_for(error: BaseException, tmp_path) -> TestClient:
    planner = Planner(PresetBook.load(), served_models=[TEST_MODEL], default_model=TEST_MODEL)
    generator = ServeGeneratorClient(FakeHandle(error), app_name="acestep", accept_timeout_s=5)
    return TestClient(create_app(Frontend(planner, generator, LocalStore(tmp_path))), raise_server_exceptions=False)


def post(client: TestClient):
    return client.post("/generate", json={"prompt": "x", "audio_duration": 1})


def test_a_full_queue_is_a_503_with_retry_after(tmp_path):
    response = post(client_for(BackPressureError(num_queued_requests=4, max_queued_requests=4), tmp_path))
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error"]["type"] == "unavailable"


def test_service_errors_raised_in_the_generator_keep_their_status(tmp_path):
    cause = Unavailable("object storage is unavailable; nothing was stored, retry later")
    wrapped = RayTaskError("generate", "traceback text", cause)
    response = post(client_for(wrapped, tmp_path))
    assert response.status_code == 503 and response.json()["error"]["message"] == cause.message
    assert "traceback" not in response.text


def test_an_unexpected_failure_is_a_500_without_internals(tmp_path):
    response = post(client_for(RuntimeError("CUDA error at /srv/secret/path.py:12"), tmp_path))
    assert response.status_code == 500
    assert response.json() == {
        "error": {"type": "internal_error", "message": "internal error; see the server log", "fields": []}
    }


def test_a_request_whose_replica_is_lost_is_sent_once_more():
    handle = FakeHandle(ActorDiedError(), "the response")
    generator = ServeGeneratorClient(handle, app_name="acestep", accept_timeout_s=5)
    assert asyncio.run(generator.generate(plan=None)) == "the response"
    assert len(handle.responses) == 2


def test_a_second_lost_replica_is_a_503_that_says_so(tmp_path):
    client = client_for(ActorDiedError(), tmp_path)
    response = post(client)
    assert response.status_code == 503 and response.headers["retry-after"]
    assert "replica handling the request was lost" in response.json()["error"]["message"]
    assert len(client.app.state.frontend.generator.handle.responses) == 2


def test_a_request_no_replica_takes_is_withdrawn_with_a_503_after_the_wait():
    handle = FakeHandle("unused", never_accepted=True)
    generator = ServeGeneratorClient(handle, app_name="acestep", accept_timeout_s=0.05)
    with pytest.raises(Unavailable, match="no generator replica is available"):
        asyncio.run(generator.generate(plan=None))
    assert [response.cancelled for response in handle.responses] == [True]


def test_service_errors_survive_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(InvalidRequest.for_field("preset", "unknown preset 'x'")))
    assert error.status == 422 and error.fields[0].field == "preset"


def test_api_keys_when_configured(tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEYS_ENV, "k1, k2")
    client = client_for(RuntimeError("unused"), tmp_path)
    assert client.get("/presets").status_code == 401
    assert client.get("/presets", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/presets", headers={"Authorization": "Bearer k2"}).status_code == 200


@pytest.mark.parametrize("value", ["", " ", ",", " , ", "k1,,k2", "k1, ,k2", "k1,", "two words", "k1,k\u00e92"])
def test_an_empty_or_malformed_key_list_refuses_to_start(tmp_path, monkeypatch, value):
    monkeypatch.setenv(API_KEYS_ENV, value)
    with pytest.raises(AuthConfigError, match=API_KEYS_ENV) as caught:
        client_for(RuntimeError("unused"), tmp_path)
    assert "k1" not in str(caught.value) and "k2" not in str(caught.value)  # no secrets in the log


def test_the_start_up_log_says_whether_auth_is_on_and_with_how_many_keys():
    assert ApiKeys.from_env({}).summary().startswith("API authentication is OFF")
    keys = ApiKeys.from_env({API_KEYS_ENV: " k1 ,k2,abc.DEF-123_~+/=="})
    assert keys.keys == ("k1", "k2", "abc.DEF-123_~+/==") and "on: 3 key(s)" in keys.summary()


@pytest.mark.parametrize("body", [[], "text", {"prompt": None}])
def test_wrong_json_shapes_are_422(tmp_path, body):
    response = client_for(RuntimeError("unused"), tmp_path).post("/generate", json=body)
    assert response.status_code == 422 and response.json()["error"]["fields"]


def test_handle_callers_get_the_same_field_errors_as_http():
    from deployments.ingress import validated
    from serve_app.jobs import JobRequest
    from serve_app.schemas import GenerateRequest

    with pytest.raises(InvalidRequest) as caught:
        validated(GenerateRequest, {"prompt": "x", "infer_step": 0, "save_path": "/tmp/x"})
    assert caught.value.status == 422
    assert {field.field for field in caught.value.fields} == {"infer_step", "save_path"}
    with pytest.raises(InvalidRequest) as caught:
        validated(JobRequest, {"prompt": "x", "webhook_url": "ftp://example.com/"})
    assert [field.field for field in caught.value.fields] == ["webhook_url"]
    assert validated(GenerateRequest, {"prompt": "x"}).prompt == "x"


@pytest.mark.parametrize("lyrics", ["😀" * 10000, "1" * 10000], ids=["emoji", "digits"])
def test_hostile_lyrics_are_a_422_before_the_generator(tmp_path, lyrics):
    client = client_for(RuntimeError("the generator must not be called"), tmp_path)
    response = client.post("/generate", json={"prompt": "x", "lyrics": lyrics, "audio_duration": 2})
    assert response.status_code == 422
    [field] = response.json()["error"]["fields"]
    assert field["field"] == "lyrics" and "4096 lyric tokens" in field["message"]


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({"prompt": " "}, "prompt", "is blank; describe the music (genre, instruments, mood)"),
        ({"prompt": "x", "actual_seeds": "1, x"}, "actual_seeds", "expected integers separated by commas"),
        ({"prompt": "x", "output_name": "a", "output_path": "b"}, "output_path", "give output_name or the legacy"),
        ({"prompt": "x", "actual_seeds": [True]}, "actual_seeds.0", "valid integer"),
        ({"prompt": "x", "torch_compile": True}, "torch_compile", "compilation is off on this server"),
    ],
)
def test_each_bad_field_is_named_with_its_reason(tmp_path, body, field, message):
    response = client_for(RuntimeError("unused"), tmp_path).post("/generate", json=body)
    assert response.status_code == 422
    [error] = response.json()["error"]["fields"]
    assert error["field"] == field and message in error["message"]
    assert "Value error" not in error["message"]


def test_models_show_their_lyric_limit(tmp_path):
    from serve_app.pipeline.registry import CATALOG

    models = client_for(RuntimeError("unused"), tmp_path).get("/models").json()
    assert {model["name"]: model["max_lyric_tokens"] for model in models} == {
        name: spec.max_lyric_tokens for name, spec in CATALOG.items()
    }


def test_models_list_their_tasks(tmp_path):
    models = {model["name"]: model for model in client_for(RuntimeError("unused"), tmp_path).get("/models").json()}
    assert models["acestep-v15-xl-base"]["tasks"] == ["text2music", "repaint", "cover"]
    assert "cover" not in models["ace-step-v1-3.5b"]["tasks"] and "extend" in models["ace-step-v1-3.5b"]["tasks"]


# ------------------------------------------------------------------ /outputs


@pytest.fixture
def stored_wav(tmp_path):
    """A client over a local store holding one 48 kHz wav written as the generator writes it."""
    store = LocalStore(tmp_path)
    audio = np.linspace(-0.5, 0.5, 48000, dtype=np.float32)
    data = encode_audio(audio[None, :], 48000, "wav")
    key = "2026-12-01/abc/42.wav"
    write_output(store, key, data, content_type("wav"), {"params": {"actual_seeds": [42]}})
    planner = Planner(PresetBook.load(), served_models=[TEST_MODEL], default_model=TEST_MODEL)
    generator = ServeGeneratorClient(FakeHandle(RuntimeError("unused")), app_name="acestep", accept_timeout_s=5)
    client = TestClient(create_app(Frontend(planner, generator, store)), raise_server_exceptions=False)
    return client, store, key, data


def test_an_output_is_served_whole_with_its_sidecar_type_and_cache_validators(stored_wav, monkeypatch):
    client, store, key, data = stored_wav
    read_whole = []
    monkeypatch.setattr(store, "get", lambda k, get=store.get: read_whole.append(k) or get(k))
    response = client.get(f"/outputs/{key}")
    assert response.status_code == 200 and response.content == data
    assert response.headers["content-type"] == "audio/wav"  # the sidecar's, not mimetypes' audio/x-wav
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] and response.headers["last-modified"]
    assert key not in read_whole  # streamed from the file, never loaded into memory
    assert client.get(f"/outputs/{key}.json").headers["content-type"] == "application/json"


def test_a_range_request_gets_206_with_exactly_that_slice(stored_wav):
    client, _, key, data = stored_wav
    response = client.get(f"/outputs/{key}", headers={"Range": "bytes=0-99"})
    assert response.status_code == 206 and response.content == data[:100]
    assert response.headers["content-range"] == f"bytes 0-99/{len(data)}"
    tail = client.get(f"/outputs/{key}", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    beyond = client.get(f"/outputs/{key}", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"


def test_a_stale_if_range_gets_the_whole_file(stored_wav):
    client, _, key, data = stored_wav
    response = client.get(f"/outputs/{key}", headers={"Range": "bytes=0-99", "If-Range": '"another-version"'})
    assert response.status_code == 200 and response.content == data


def test_head_gives_the_length_without_a_body(stored_wav):
    client, _, key, data = stored_wav
    response = client.head(f"/outputs/{key}")
    assert response.status_code == 200 and response.content == b""
    assert int(response.headers["content-length"]) == len(data) and response.headers["content-type"] == "audio/wav"
    assert client.head("/outputs/2026-12-01/abc/missing.wav").status_code == 404


def test_outputs_need_the_key_when_auth_is_on(stored_wav):
    open_client, _, key, _ = stored_wav
    client = TestClient(create_app(open_client.app.state.frontend, ApiKeys.from_env({API_KEYS_ENV: "k1"})))
    assert client.get(f"/outputs/{key}").status_code == 401
    assert client.head(f"/outputs/{key}").status_code == 401
    assert client.get(f"/outputs/{key}", headers={"Authorization": "Bearer k1"}).status_code == 200


@pytest.mark.parametrize(
    "method, path, status, kind",
    [("get", "/no/such/route", 404, "not_found"), ("delete", "/generate", 405, "method_not_allowed")],
)
def test_routing_errors_have_the_documented_error_shape(tmp_path, method, path, status, kind):
    response = getattr(client_for(RuntimeError("unused"), tmp_path), method)(path)
    assert response.status_code == status
    assert response.json()["error"]["type"] == kind and "detail" not in response.json()


def test_client_errors_are_logged_at_info_without_a_traceback_and_faults_stay_errors(caplog):
    import logging

    from serve_app.error_logging import log_client_errors_at_info
    from serve_app.jobs import JobConflict, JobNotFound

    logger = logging.getLogger("test.serve.replica")
    log_client_errors_at_info(logger)
    log_client_errors_at_info(logger)  # installing twice filters once
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=logger.name):
        for error in (JobNotFound(), JobConflict("job x is already succeeded"), InvalidRequest("bad"), RuntimeError()):
            try:
                raise error
            except Exception:
                logger.exception("Request failed.")
    client, *_, fault = caplog.records
    assert [record.levelname for record in caplog.records] == ["INFO", "INFO", "INFO", "ERROR"]
    assert client.getMessage() == "client error 404 not_found: no job with this id" and client.exc_info is None
    assert fault.exc_info is not None and "Traceback" in caplog.text.split("client error 422")[-1]
