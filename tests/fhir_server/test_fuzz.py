"""Bad input never breaks the FHIR API (https://hl7.org/fhir/R4/http.html, operationoutcome.html).

Every malformed request gets a 4xx OperationOutcome that leaks no internals (stack traces, SQL,
driver names), and the server keeps serving afterwards. Fixed tables cover the known kinds of bad
input; Hypothesis and Schemathesis generate the rest. Runs on SQLite and PostgreSQL (~2 min).
"""

from __future__ import annotations

import base64
import itertools
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import schemathesis
from fastapi.testclient import TestClient
from httpx import Response
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from fhir_server.resource_types import supported_types
from fhir_server.writes import ID

FHIR = {"Content-Type": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
LIMIT = 2 * 1024 * 1024  # the `record` fixture's max_body_bytes
ANCHOR = "fuzz-anchor"  # read after every case: the server must still serve it
TARGET = "fuzz-target"  # the resource that updates, patches and If-Match cases aim at
_LEAKS = re.compile(
    r"traceback|sqlalchemy|psycopg|sqlite3|\[SQL:|\bSELECT\b.+\bFROM\b|\bINSERT INTO\b|File \"",
    re.IGNORECASE | re.DOTALL,
)
# Function-scoped fixtures are fine here: every example must leave the same database serving.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- assertions -----------------------------------------------------------------------------


def assert_outcome(response: Response, *statuses: int) -> dict[str, Any]:
    """A 4xx OperationOutcome with an error issue and a diagnostics text, leaking no internals."""
    shown = f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text[:400]}"
    allowed = statuses or tuple(range(400, 500))
    assert response.status_code in allowed, shown
    assert 400 <= response.status_code < 500, shown
    assert response.headers["content-type"].startswith("application/fhir+json"), shown
    assert not _LEAKS.search(response.text), shown
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", shown
    issue = body["issue"][0]
    assert issue["severity"] == "error", shown
    assert isinstance(issue["diagnostics"], str) and issue["diagnostics"].strip(), shown
    return dict(body)


def assert_handled(response: Response, *ok: int) -> None:
    """Either one of the success statuses ``ok`` or a clean 4xx OperationOutcome, never a 5xx."""
    if currently_in_test_context():  # --hypothesis-show-statistics: is success reached?
        event(f"HTTP {response.status_code}")
    if response.status_code in ok:
        assert not _LEAKS.search(response.text), response.text[:400]
        return
    assert_outcome(response)


def assert_refused(response: Response) -> None:
    """A 4xx OperationOutcome; $validate may instead answer 200 with an error outcome."""
    if response.request.url.path.endswith("$validate") and response.status_code == 200:
        issue = response.json()["issue"][0]
        assert issue["severity"] == "error", response.text[:400]
        assert not _LEAKS.search(response.text), response.text[:400]
        return
    assert_outcome(response)


def assert_serving(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    read = client.get(f"/fhir/Patient/{ANCHOR}")
    assert read.status_code == 200, read.text[:400]
    assert read.json()["id"] == ANCHOR


# --- requests -------------------------------------------------------------------------------


def send(
    client: TestClient, method: str, path: str, body: bytes | None = None, **headers: str
) -> Response:
    response: Response = client.request(method, f"/fhir/{path}", content=body, headers=headers)
    return response


# Endpoints that take a resource (or bundle) body: (method, path).
BODY_ENDPOINTS = (
    ("POST", "Patient"),
    ("PUT", f"Patient/{TARGET}"),
    ("POST", ""),
    ("POST", "Patient/$validate"),
)


@pytest.fixture(autouse=True)
def _resources(client: TestClient) -> Iterator[None]:
    """The anchor (only ever read: it must survive every case) and the target (updated,
    patched, perhaps deleted by generated cases)."""
    for id in (ANCHOR, TARGET):
        body = orjson.dumps({"resourceType": "Patient", "id": id, "name": [{"family": "Anker"}]})
        assert send(client, "PUT", f"Patient/{id}", body, **FHIR).status_code == 201
    yield
    assert_serving(client)


def patient(**extra: Any) -> bytes:
    return orjson.dumps({"resourceType": "Patient", **extra})


def transaction(*entries: Any, kind: str = "transaction") -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)})


def post_entry(resource: Any, url: str = "Patient") -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "POST", "url": url}}


_PATIENT_HEAD = b'{"resourceType":"Patient"'


def for_endpoint(method: str, path: str, resource: bytes) -> bytes:
    """The resource as the endpoint expects it: a PUT carries the target id, a base POST a bundle.

    Works on the serialized bytes, because the deeply nested bodies cannot be parsed in Python.
    """
    if path == "":
        entry = b'{"request":{"method":"POST","url":"Patient"},"resource":%s}' % resource
        return b'{"resourceType":"Bundle","type":"transaction","entry":[%s]}' % entry
    if method == "PUT" and resource.startswith(_PATIENT_HEAD):
        rest = resource[len(_PATIENT_HEAD) :]  # starts with "," or "}"
        return _PATIENT_HEAD + b',"id":"%s"' % TARGET.encode() + rest
    return resource


# --- malformed and wrongly typed JSON ---------------------------------------------------------

MALFORMED = (
    b"{",
    b'{"resourceType":"Patient",}',
    b'{"resourceType":"Patient"} trailing',
    b"\xff\xfe\x00{",
    b'{"resourceType":"Patient","active":NaN}',
    b'{"resourceType":"Patient","name":[{"family":"\\ud800"}]}',  # lone surrogate
    b"",
    b"   ",
)


NOT_OBJECTS = (b"[]", b'[{"resourceType":"Patient"}]', b"5", b'"Patient"', b"null", b"true")


def test_malformed_json_and_non_objects_are_400(client: TestClient) -> None:
    for method, path in BODY_ENDPOINTS:
        for body in MALFORMED + NOT_OBJECTS:
            assert_outcome(send(client, method, path, body, **FHIR), 400)
    assert_serving(client)


WRONG_TYPES: tuple[dict[str, Any], ...] = (
    {"birthDate": 5},
    {"birthDate": "yesterday"},
    {"name": "x"},
    {"name": [5]},
    {"gender": 5},
    {"identifier": {}},
    {"telecom": [{"system": "fax", "value": 5}]},
    {"meta": 5},
    {"id": 5},
    {"managingOrganization": {"reference": 5}},
)


def test_wrong_element_types_are_refused(client: TestClient) -> None:
    for extra in WRONG_TYPES:
        for method, path in BODY_ENDPOINTS[:3]:
            body = for_endpoint(method, path, patient(**extra))
            outcome = assert_outcome(send(client, method, path, body, **FHIR), 422)
            assert len(outcome["issue"]) >= 2, outcome  # a summary, then the element at fault
        validated = send(client, "POST", "Patient/$validate", patient(**extra), **FHIR)
        assert validated.status_code == 200  # $validate ran; the outcome tells the verdict
        assert validated.json()["issue"][0]["severity"] == "error", validated.text
    assert_serving(client)


def test_unknown_elements_are_422(client: TestClient) -> None:
    # FHIR JSON names are case-sensitive: "birthdate" is unknown (json.html).
    unknown = ({"foo": 1}, {"name": [{"family": "x", "nick": "y"}]}, {"birthdate": "2000-01-01"})
    for extra in unknown:
        for method, path in BODY_ENDPOINTS[:3]:
            response = send(
                client, method, path, for_endpoint(method, path, patient(**extra)), **FHIR
            )
            outcome = assert_outcome(response, 422)
            assert any(i["code"] in ("structure", "value") for i in outcome["issue"]), outcome
    assert_serving(client)


def test_resource_type_mismatch_is_400(client: TestClient) -> None:
    observation = b'{"resourceType":"Observation","status":"final","code":{"text":"x"}}'
    assert_outcome(send(client, "POST", "Patient", observation, **FHIR), 400)
    put = b'{"resourceType":"Observation","id":"%s","status":"final","code":{"text":"x"}}'
    assert_outcome(send(client, "PUT", f"Patient/{TARGET}", put % TARGET.encode(), **FHIR), 400)
    for body in (
        b"{}",
        b'{"resourceType":5}',
        b'{"resourceType":null}',
        b'{"resourceType":["Patient"]}',
    ):
        assert_outcome(send(client, "POST", "Patient", body, **FHIR), 400)
    mismatch = transaction(post_entry(orjson.loads(observation), url="Patient"))
    assert_outcome(send(client, "POST", "", mismatch, **FHIR), 400)
    not_a_bundle = patient(type="transaction")
    assert_outcome(send(client, "POST", "", not_a_bundle, **FHIR), 400)
    assert_serving(client)


# --- size and depth ---------------------------------------------------------------------------


def _oversized() -> bytes:
    padding = "x" * (LIMIT + 1)
    return orjson.dumps(
        {"resourceType": "Patient", "text": {"status": "generated", "div": padding}}
    )


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    body = _oversized()
    for method, path in BODY_ENDPOINTS:
        assert_outcome(send(client, method, path, body, **FHIR), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    streamed = client.post("/fhir/Patient", content=chunks(), headers=FHIR)
    assert "content-length" not in streamed.request.headers
    assert_outcome(streamed, 413)
    assert_serving(client)


def _nested_extension(depth: int) -> bytes:
    opening = b'{"url":"http://example.org/x","extension":[' * depth
    return b'{"resourceType":"Patient","extension":[' + opening + b"]}" * depth + b"]}"


def _nested_arrays(depth: int) -> bytes:
    return b'{"resourceType":"Patient","extension":' + b"[" * depth + b"]" * depth + b"}"


def _nested_objects(depth: int) -> bytes:
    return b'{"resourceType":"Patient","contact":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


NESTINGS: dict[str, Callable[[int], bytes]] = {
    "extension": _nested_extension,
    "arrays": _nested_arrays,
    "objects": _nested_objects,
}


def test_ten_thousand_deep_nesting_is_400(client: TestClient) -> None:
    bodies = [nested(10_000) for nested in NESTINGS.values()]
    for (method, path), body in itertools.product(BODY_ENDPOINTS, bodies):
        response = send(client, method, path, for_endpoint(method, path, body), **FHIR)
        assert "depth" in assert_outcome(response, 400)["issue"][0]["diagnostics"]
    patch = b'[{"op":"add","path":"/extension","value":' + b"[" * 10_000 + b"]" * 10_000 + b"}]"
    assert_outcome(send(client, "PATCH", f"Patient/{TARGET}", patch, **JSON_PATCH), 400)
    assert_serving(client)


def test_deep_nesting_below_the_parser_limit_is_refused(client: TestClient) -> None:
    """300 levels parse as JSON but are too deep to validate: 422, and $validate says invalid."""
    body = _nested_extension(300)
    for method, path in BODY_ENDPOINTS[:3]:
        assert_outcome(send(client, method, path, for_endpoint(method, path, body), **FHIR), 422)
    validated = send(client, "POST", "Patient/$validate", body, **FHIR)
    assert validated.status_code == 200
    assert validated.json()["issue"][0]["severity"] == "error"
    assert_serving(client)


def test_deep_json_patch_value_is_4xx(client: TestClient) -> None:
    # Built as bytes: orjson cannot serialise 300 levels, the server must still cope with them.
    value = (
        _nested_extension(300)
        .removeprefix(b'{"resourceType":"Patient","extension":')
        .removesuffix(b"}")
    )
    patch = b'[{"op":"add","path":"/extension","value":' + value + b"}]"
    assert_outcome(send(client, "PATCH", f"Patient/{TARGET}", patch, **JSON_PATCH), 422)


# --- media types, ids, types, headers ---------------------------------------------------------

WRONG_MEDIA = (
    ("text/plain", b'{"resourceType":"Patient"}'),
    ("application/xml", b'<Patient xmlns="http://hl7.org/fhir"/>'),
    ("application/fhir+xml", b'<Patient xmlns="http://hl7.org/fhir"/>'),
    ("application/x-www-form-urlencoded", b"resourceType=Patient"),
    (
        "multipart/form-data; boundary=x",
        b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--x--\r\n',
    ),
    ("application/json-patch+json", b"[]"),
)


def test_wrong_content_type_is_415(client: TestClient) -> None:
    for method, path in BODY_ENDPOINTS:
        for media, body in WRONG_MEDIA:
            assert_outcome(send(client, method, path, body, **{"Content-Type": media}), 415)
        assert_outcome(send(client, method, path, patient()), 415)  # no Content-Type at all
    patch = b'[{"op":"replace","path":"/active","value":true}]'
    for media in ("application/fhir+json", "application/json", "text/plain"):
        response = send(client, "PATCH", f"Patient/{TARGET}", patch, **{"Content-Type": media})
        assert_outcome(response, 415)
    search = send(client, "POST", "Patient/_search", b'{"name":"x"}', **FHIR)
    assert_outcome(search, 415)
    form = client.post("/fhir/Patient", data={"resourceType": "Patient"})
    assert_outcome(form, 415)
    assert_serving(client)


BAD_IDS = ("bad%20id!", "a" * 65, "%C3%A4rger", "id_with_underscore", "x%2Cy", "%20")


def test_invalid_ids_in_the_url_are_400(client: TestClient) -> None:
    for id in BAD_IDS:
        body = patient(id=id)
        for method, path, content, headers in (
            ("GET", f"Patient/{id}", None, {}),
            ("PUT", f"Patient/{id}", body, FHIR),
            ("DELETE", f"Patient/{id}", None, {}),
            ("PATCH", f"Patient/{id}", b"[]", JSON_PATCH),
            ("GET", f"Patient/{id}/_history", None, {}),
            ("GET", f"Patient/{id}/_history/1", None, {}),
        ):
            outcome = assert_outcome(send(client, method, path, content, **headers), 400)
            assert "not a valid FHIR id" in outcome["issue"][0]["diagnostics"]
    assert_serving(client)


def test_invalid_ids_in_the_body_are_refused(client: TestClient) -> None:
    for id in ("bad id!", "a" * 65, "", "ä"):
        # Update: the body's id is invalid and differs from the URL's.
        assert_outcome(send(client, "PUT", f"Patient/{TARGET}", patient(id=id), **FHIR), 400, 422)
        entry = {
            "resource": {"resourceType": "Patient", "id": id},
            "request": {"method": "PUT", "url": f"Patient/{id}"},
        }
        assert_outcome(send(client, "POST", "", transaction(entry), **FHIR), 400, 422)
        # Create: the server may refuse the invalid id or ignore it (http.html#create).
        assert_ignored_or_refused(send(client, "POST", "Patient", patient(id=id), **FHIR), id)
    assert_serving(client)


def assert_ignored_or_refused(response: Response, given_id: str) -> None:
    if response.status_code != 201:
        assert_outcome(response, 422)
        return
    assigned = response.json()["id"]
    assert assigned != given_id and ID.match(assigned), response.text


def test_unknown_resource_types_are_404(client: TestClient) -> None:
    for rtype in (
        "Foo",
        "patient",
        "PATIENT",
        "Evidence",
        "MedicinalProduct",
        "Resource",
        "DomainResource",
    ):
        body = orjson.dumps({"resourceType": rtype})
        for method, path, content, headers in (
            ("GET", f"{rtype}", None, {}),
            ("GET", f"{rtype}/1", None, {}),
            ("POST", f"{rtype}", body, FHIR),
            ("PUT", f"{rtype}/1", body, FHIR),
            ("DELETE", f"{rtype}/1", None, {}),
            ("GET", f"{rtype}/_history", None, {}),
            ("POST", f"{rtype}/$validate", body, FHIR),
        ):
            assert_outcome(send(client, method, path, content, **headers), 404)
        bundle = transaction(post_entry({"resourceType": rtype}, url=rtype))
        assert_outcome(send(client, "POST", "", bundle, **FHIR), 404)
    assert_serving(client)


BAD_IF_MATCH = ("garbage", 'W/"abc"', '"1', 'W/""', "W/1", "*", 'W/"1.0"', 'W/"-1"', 'W/"2"')


def test_invalid_if_match_is_412(client: TestClient) -> None:
    update = patient(id=TARGET, active=True)
    for value in BAD_IF_MATCH:
        headers = {"If-Match": value}
        assert_outcome(send(client, "PUT", f"Patient/{TARGET}", update, **FHIR, **headers), 412)
        patch = b'[{"op":"add","path":"/active","value":true}]'
        assert_outcome(
            send(client, "PATCH", f"Patient/{TARGET}", patch, **JSON_PATCH, **headers), 412
        )
        assert_outcome(send(client, "DELETE", f"Patient/{TARGET}", None, **headers), 412)
    current = client.get(f"/fhir/Patient/{TARGET}")
    assert current.headers["etag"] == 'W/"1"' and "active" not in current.json()
    assert_serving(client)


def test_bad_paging_and_history_parameters_are_400(client: TestClient) -> None:
    cases = [
        ("Patient", {"_count": value}) for value in ("-1", "abc", "1.5", "", "1e3", " 5", "0x10")
    ] + [
        ("Patient", {"_offset": "x"}),
        ("Patient", {"_offset": "-10"}),
        ("_history", {"_count": "many"}),
        ("_history", {"_since": "yesterday"}),
        ("_history", {"_since": "2020-13-01"}),
        ("_history", {"_since": "2020-02-30T10:00:00Z"}),
        ("_history", {"_since": "2020-01-01T25:00:00Z"}),
        ("_history", {"_at": "x"}),
        ("_history", {"_cursor": "x"}),
        ("_history", {"_foo": "1"}),
        ("Patient/_history", {"_since": "1 day ago"}),
        (f"Patient/{ANCHOR}/_history", {"_count": "-5"}),
        ("Patient", {"birthdate": "ge2020-99"}),
        ("Patient", {"unknown-param": "x"}),
        ("Patient", {"name:fuzzy": "x"}),
    ]
    for path, query in cases:
        assert_outcome(client.get(f"/fhir/{path}", params=query), 400)
    assert_serving(client)


BAD_PATCHES: tuple[tuple[bytes, int], ...] = (
    (b"{}", 400),
    (b'"add"', 400),
    (b"[1, 2]", 422),
    (b'[{"op":"bogus","path":"/active"}]', 422),
    (b'[{"op":"add","value":true}]', 422),
    (b'[{"path":"/active","value":true}]', 422),
    (b'[{"op":"remove","path":"active"}]', 422),
    (b'[{"op":"remove","path":"/nothing-here"}]', 422),
    (b'[{"op":"move","from":"/nope","path":"/x"}]', 422),
    (b'[{"op":"add","path":"/a~2","value":1}]', 422),
    (b'[{"op":"test","path":"/id","value":"other"}]', 422),
    (b'[{"op":"replace","path":"/id","value":"other"}]', 422),
    (b'[{"op":"remove","path":"/id"}]', 422),
    (b'[{"op":"add","path":"","value":[]}]', 422),
    (b'[{"op":"add","path":"/birthDate","value":5}]', 422),
    (b'[{"op":"add","path":"/unknown","value":5}]', 422),
    (b'[{"op":"add","path":"/resourceType","value":"Observation"}]', 400),
    (b'[{"op":"add","path":"/name/99","value":{}}]', 422),
    (b"[", 400),
)


def test_bad_json_patch_documents_are_refused(client: TestClient) -> None:
    for document, status in BAD_PATCHES:
        assert_outcome(send(client, "PATCH", f"Patient/{TARGET}", document, **JSON_PATCH), status)
    current = client.get(f"/fhir/Patient/{TARGET}")
    assert current.headers["etag"] == 'W/"1"', "a refused patch must not write a version"
    missing = send(client, "PATCH", "Patient/does-not-exist", b"[]", **JSON_PATCH)
    assert_outcome(missing, 404)
    assert_serving(client)


def test_malformed_bundles_are_400(client: TestClient) -> None:
    bodies: list[Any] = [
        {"resourceType": "Bundle", "type": "transaction", "entry": {"request": {}}},
        {"resourceType": "Bundle", "type": "transaction", "entry": [5]},
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": {"resourceType": "Patient"}}],
        },
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "GET", "url": 5}}],
        },
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": 1, "url": "Patient"}}],
        },
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "TRACE", "url": "Patient"}}],
        },
        {"resourceType": "Bundle", "type": "transaction", "entry": [post_entry(5)]},
        {"resourceType": "Bundle", "type": "transaction", "entry": [post_entry([])]},
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [post_entry({"resourceType": "Patient"}, url="Patient/a/b/c")],
        },
        {"resourceType": "Bundle", "type": "searchset", "entry": []},
        {"resourceType": "Bundle", "type": 5},
        {"resourceType": "Bundle"},
    ]
    for body in bodies:
        assert_outcome(send(client, "POST", "", orjson.dumps(body), **FHIR), 400)
    assert_serving(client)


def test_bundle_patch_with_bad_binary_is_refused(client: TestClient) -> None:
    def patch_entry(data: str) -> dict[str, Any]:
        binary = {
            "resourceType": "Binary",
            "contentType": "application/json-patch+json",
            "data": data,
        }
        return {"resource": binary, "request": {"method": "PATCH", "url": f"Patient/{TARGET}"}}

    assert_outcome(send(client, "POST", "", transaction(patch_entry("!!!")), **FHIR), 400)
    not_a_patch = base64.b64encode(b"{}").decode()
    assert_outcome(send(client, "POST", "", transaction(patch_entry(not_a_patch)), **FHIR), 422)
    assert_serving(client)


# --- known defects (remove the mark when fixed) ------------------------------------------------


def test_non_ascii_digits_in_count_are_400(client: TestClient) -> None:
    for path, name in (("Patient", "_count"), ("Patient", "_offset"), ("_history", "_count")):
        assert_outcome(client.get(f"/fhir/{path}", params={name: "²"}), 400)


def test_huge_numbers_are_4xx(client: TestClient) -> None:
    huge = str(10**20)
    for path, query in (
        ("Patient", {"_offset": huge}),
        ("_history", {"_cursor": huge}),
        (f"Patient/{ANCHOR}/_history/{huge}", {}),
    ):
        assert_outcome(client.get(f"/fhir/{path}", params=query))


def test_nul_in_a_string_is_refused(client: TestClient) -> None:
    body = patient(name=[{"family": "\x00"}])
    assert_outcome(send(client, "POST", "Patient", body, **FHIR), 400, 422)


def test_nul_in_a_search_value_is_400(client: TestClient) -> None:
    for name in ("name", "identifier", "family"):
        response = client.get("/fhir/Patient", params={name: "a\x00b"})
        assert_outcome(response, 400)


def test_primitives_must_have_their_json_type(client: TestClient) -> None:
    for extra in (
        {"active": "yes"},
        {"active": 1},
        {"deceasedBoolean": "false"},
        {"multipleBirthInteger": "2"},
    ):
        assert_outcome(send(client, "POST", "Patient", patient(**extra), **FHIR), 422)


def test_encoded_control_characters_in_an_id_are_400(client: TestClient) -> None:
    for encoded in ("%0A", "%09", "%0D"):
        mangled = f"{ANCHOR[:3]}{encoded}{ANCHOR[3:]}"
        assert_outcome(client.get(f"/fhir/Patient/{mangled}"), 400)


def test_contained_resource_of_unknown_type_is_422(client: TestClient) -> None:
    body = patient(contained=[{"resourceType": "Foo", "id": "x"}])
    assert_outcome(send(client, "POST", "Patient", body, **FHIR), 422)


def test_malformed_validate_parameters_are_400(client: TestClient) -> None:
    for parameters in ([5], 5, [{"name": "resource", "resource": 5}]):
        body = orjson.dumps({"resourceType": "Parameters", "parameter": parameters})
        assert_outcome(send(client, "POST", "Patient/$validate", body, **FHIR), 400)


def test_bundle_patch_with_non_string_binary_data_is_400(client: TestClient) -> None:
    entry = {
        "resource": {
            "resourceType": "Binary",
            "contentType": "application/json-patch+json",
            "data": 5,
        },
        "request": {"method": "PATCH", "url": f"Patient/{TARGET}"},
    }
    assert_outcome(send(client, "POST", "", transaction(entry), **FHIR), 400)


# --- generated input (Hypothesis) -------------------------------------------------------------

# U+0000 is left out of generated text: the dedicated NUL tests above cover it.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


def _json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function: Hypothesis inspects the source of a lambda here, which breaks when the
    # file changes during a run.
    return st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4)


JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    _json_containers,
    max_leaves=20,
)


def _sane_number_text(text: str) -> bool:
    """Excludes the two known defects: non-ASCII digits and numbers too large for SQL."""
    return not (text.isdigit() and (not text.isascii() or len(text) > 15))


@FUZZ
@given(body=st.binary(max_size=300), endpoint=st.sampled_from(BODY_ENDPOINTS))
def test_random_bytes_are_refused(
    client: TestClient, body: bytes, endpoint: tuple[str, str]
) -> None:
    method, path = endpoint
    assert_refused(send(client, method, path, body, **FHIR))
    assert_serving(client)


@FUZZ
@given(body=JSON_VALUES, endpoint=st.sampled_from(BODY_ENDPOINTS))
def test_random_json_is_refused(client: TestClient, body: Any, endpoint: tuple[str, str]) -> None:
    method, path = endpoint
    assert_refused(send(client, method, path, orjson.dumps(body), **FHIR))
    assert_serving(client)


PATIENT_ELEMENTS = (
    "id", "meta", "text", "extension", "identifier", "active", "name", "telecom", "gender",
    "birthDate", "deceasedBoolean", "address", "maritalStatus", "contact", "managingOrganization",
    "link", "multipleBirthInteger", "photo",
)  # fmt: skip


@FUZZ
@given(
    elements=st.dictionaries(st.sampled_from(PATIENT_ELEMENTS) | TEXT, JSON_VALUES, max_size=4),
    endpoint=st.sampled_from(BODY_ENDPOINTS),
)
def test_patient_with_random_element_values(
    client: TestClient, elements: dict[str, Any], endpoint: tuple[str, str]
) -> None:
    method, path = endpoint
    resource = {**elements, "resourceType": "Patient"}
    if method == "PUT":
        resource["id"] = TARGET
    body = (
        for_endpoint(method, path, orjson.dumps(resource)) if path == "" else orjson.dumps(resource)
    )
    assert_handled(send(client, method, path, body, **FHIR), 200, 201)
    assert_serving(client)


# Structurally valid resources with edge values: they reach the index and the database.
DATES = st.from_regex(
    r"\A[0-9]{4}(-[0-9]{2}(-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))?)?)?\Z"
)
NUMBERS = st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
EDGE_OBSERVATIONS = st.fixed_dictionaries(
    {
        "resourceType": st.just("Observation"),
        "status": st.sampled_from(["final", "amended", "bogus", ""]),
        "code": st.fixed_dictionaries(
            {"coding": st.lists(st.fixed_dictionaries({"system": TEXT, "code": TEXT}), max_size=2)}
        ),
        "subject": st.fixed_dictionaries(
            {
                "reference": st.sampled_from([f"Patient/{ANCHOR}", "Patient/", "Patient/missing"])
                | TEXT
            }
        ),
        "effectiveDateTime": DATES,
        "valueQuantity": st.fixed_dictionaries({"value": NUMBERS, "unit": TEXT, "system": TEXT}),
    }
)
EDGE_PATIENTS = st.fixed_dictionaries(
    {
        "resourceType": st.just("Patient"),
        "identifier": st.lists(st.fixed_dictionaries({"system": TEXT, "value": TEXT}), max_size=2),
        "name": st.lists(
            st.fixed_dictionaries({"family": TEXT, "given": st.lists(TEXT, max_size=2)}), max_size=2
        ),
        "birthDate": DATES,
        "telecom": st.lists(
            st.fixed_dictionaries({"system": st.just("phone"), "value": TEXT}), max_size=1
        ),
    }
)


@FUZZ
@given(resource=EDGE_PATIENTS | EDGE_OBSERVATIONS, in_bundle=st.booleans())
def test_edge_values_in_valid_shapes(
    client: TestClient, resource: dict[str, Any], in_bundle: bool
) -> None:
    rtype = resource["resourceType"]
    if in_bundle:
        response = send(client, "POST", "", transaction(post_entry(resource, url=rtype)), **FHIR)
        assert_handled(response, 200)
    else:
        assert_handled(send(client, "POST", rtype, orjson.dumps(resource), **FHIR), 201)
    assert_serving(client)


# Left out: what changes the route ("/", "_", "$", ".") and what the known URL defect drops
# (tab, CR, LF: see test_encoded_control_characters_in_an_id_are_400).
SAFE_ID_CHARS = st.characters(codec="utf-8", exclude_characters="\x00/_$.\t\r\n")


@FUZZ
@given(
    id=st.text(SAFE_ID_CHARS, min_size=1, max_size=70).filter(lambda s: ID.match(s) is None)
    | st.from_regex(r"\A[A-Za-z0-9\-.]{65,100}\Z"),
    method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]),
)
def test_random_invalid_ids_in_the_url_are_400(client: TestClient, id: str, method: str) -> None:
    bodies: dict[str, tuple[bytes, dict[str, str]]] = {
        "PUT": (patient(), FHIR),
        "PATCH": (b"[]", JSON_PATCH),
    }
    body, headers = bodies.get(method, (b"", {}))
    response = send(client, method, f"Patient/{quote(id, safe='')}", body or None, **headers)
    assert_outcome(response, 400)
    assert_serving(client)


@FUZZ
@given(
    rtype=st.from_regex(r"\A[A-Za-z][A-Za-z0-9]{0,40}\Z").filter(
        lambda t: t not in supported_types() and t != "metadata"
    ),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
)
def test_random_resource_type_names_are_404(client: TestClient, rtype: str, method: str) -> None:
    body = orjson.dumps({"resourceType": rtype}) if method == "POST" else None
    assert_outcome(
        send(client, method, f"{rtype}/x1" if method != "POST" else rtype, body, **FHIR), 404
    )
    assert_serving(client)


_VALID_ETAG = re.compile(r'^(?:W/)?"[0-9]+"$')


@FUZZ
@given(value=HEADER_TEXT.filter(lambda v: not _VALID_ETAG.match(v.strip())))
def test_random_if_match_values_are_412(client: TestClient, value: str) -> None:
    update = patient(id=TARGET, active=True)
    assert_outcome(
        send(client, "PUT", f"Patient/{TARGET}", update, **FHIR, **{"If-Match": value}), 412
    )
    assert_serving(client)


@FUZZ
@given(
    name=st.sampled_from(["_count", "_offset"]),
    value=TEXT.filter(lambda v: not v.isdigit()),
    path=st.sampled_from(["Patient", "Observation", "_history", "Patient/_history"]),
)
def test_random_non_numbers_for_count_and_offset_are_400(
    client: TestClient, name: str, value: str, path: str
) -> None:
    if "_history" in path and name == "_offset":
        name = "_cursor"
    assert_outcome(client.get(f"/fhir/{path}", params={name: value}), 400)
    assert_serving(client)


SEARCH_PARAMS = (
    ("Patient", "name"), ("Patient", "family"), ("Patient", "identifier"), ("Patient", "birthdate"),
    ("Patient", "_id"), ("Patient", "organization"), ("Patient", "gender"), ("Patient", "name:exact"),
    ("Patient", "name:contains"), ("Observation", "subject"), ("Observation", "date"),
    ("Observation", "code"), ("Observation", "value-quantity"), ("_history", "_since"),
    ("_history", "_at"), ("Patient", "_count"), ("Patient", "_offset"), ("Patient", "_sort"),
)  # fmt: skip


@FUZZ
@given(
    param=st.sampled_from(SEARCH_PARAMS),
    value=(
        TEXT
        | DATES
        | st.sampled_from(["ge2020", "lt2020-01-01T00:00:00Z", "a,b", "x|y", "|y", "x|"])
    ).filter(_sane_number_text),
)
def test_random_search_values_never_fail_the_server(
    client: TestClient, param: tuple[str, str], value: str
) -> None:
    path, name = param
    response = client.get(f"/fhir/{path}", params={name: value})
    assert_handled(response, 200)
    if response.status_code == 200:
        assert response.json()["resourceType"] == "Bundle"
    assert_serving(client)


POINTERS = (
    st.sampled_from(["/active", "/name", "/name/0", "/name/-", "/birthDate", "/gender", "", "/"])
    | TEXT
)
PATCH_OPERATIONS = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test"]) | TEXT,
        "path": POINTERS,
    },
    optional={"value": JSON_VALUES, "from": POINTERS},
)


@FUZZ
@given(document=st.lists(PATCH_OPERATIONS, max_size=4) | JSON_VALUES)
def test_random_json_patch_documents(client: TestClient, document: Any) -> None:
    response = send(client, "PATCH", f"Patient/{TARGET}", orjson.dumps(document), **JSON_PATCH)
    assert_handled(response, 200)
    if response.status_code == 200:
        assert response.json()["id"] == TARGET
    assert_serving(client)


BUNDLE_REQUESTS = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]) | TEXT,
        "url": st.sampled_from(["Patient", f"Patient/{TARGET}", "Patient?name=x", "metadata", ""])
        | TEXT,
    },
    optional={"ifMatch": HEADER_TEXT, "ifNoneExist": TEXT},
)
BUNDLE_ENTRIES = st.fixed_dictionaries(
    {"request": BUNDLE_REQUESTS | JSON_VALUES},
    optional={"resource": EDGE_PATIENTS | JSON_VALUES, "fullUrl": TEXT},
)


@FUZZ
@given(
    entries=st.lists(BUNDLE_ENTRIES, max_size=4).filter(
        lambda es: all(_sane_bundle_url(e) for e in es)
    ),
    kind=st.sampled_from(["transaction", "batch"]),
)
def test_random_bundles(client: TestClient, entries: list[dict[str, Any]], kind: str) -> None:
    response = send(client, "POST", "", transaction(*entries, kind=kind), **FHIR)
    assert_handled(response, 200)
    if response.status_code == 200:
        assert len(response.json()["entry"]) == len(entries)
    assert_serving(client)


def _sane_bundle_url(entry: dict[str, Any]) -> bool:
    """Keeps the anchor alive (no conditional Patient writes that could match it) and the known
    query-number defect out of generated bundles."""
    request = entry.get("request")
    url = request.get("url") if isinstance(request, dict) else None
    if not isinstance(url, str):
        return True
    if ANCHOR in url or (url.lstrip("/").startswith("Patient?") and url != "Patient?name=x"):
        return False
    return all(_sane_number_text(part.partition("=")[2]) for part in url.split("&"))


# --- the OpenAPI document (Schemathesis) ------------------------------------------------------

# The app's routes take the raw request, so FastAPI declares no path parameters; declared here.
# Valid cases use these values (so they reach real resources), invalid cases anything else.
_PATH_PARAMETERS = {
    "type": {"enum": ["Patient", "Observation", "Encounter", "Bundle"]},
    "id": {"enum": [TARGET, "not-there"]},  # never the anchor: DELETE is an operation too
    "vid": {"enum": ["1", "2"]},
}


@dataclass(frozen=True)
class Api:
    schema: Any  # schemathesis' OpenApiSchema, bound to the in-process app
    operations: list[tuple[str, str]]  # (method, path) of every documented operation


def _openapi_document(client: TestClient) -> dict[str, Any]:
    with warnings.catch_warnings():
        # Known: FastAPI warns about duplicate operation ids (see test_openapi_document_is_complete).
        warnings.filterwarnings("ignore", "Duplicate Operation ID", UserWarning)
        response = client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


@pytest.fixture
def api(client: TestClient) -> Api:
    document = _openapi_document(client)
    operations = []
    for path, methods in document["paths"].items():
        names = [part.strip("{}") for part in path.split("/") if part.startswith("{")]
        for method, operation in methods.items():
            operations.append((method.upper(), path))
            operation.setdefault("parameters", []).extend(
                {"name": n, "in": "path", "required": True, "schema": _PATH_PARAMETERS[n]}
                for n in names
                if not any(p["name"] == n for p in operation["parameters"])
            )
    assert len(operations) >= 15, operations  # the whole FHIR API is documented
    schema = schemathesis.openapi.from_dict(document)
    schema.app = client.app
    return Api(schema, sorted(operations))


def test_openapi_document_is_complete(client: TestClient) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        document = client.get("/openapi.json").json()
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), "operation ids must be unique"
    for path, operations in document["paths"].items():
        names = {part.strip("{}") for part in path.split("/") if part.startswith("{")}
        for operation in operations.values():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names <= declared, f"{path}: undeclared path parameters {names - declared}"


@settings(
    max_examples=400,  # about 20 per operation and database
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_openapi_operations_never_fail_with_5xx(
    client: TestClient, api: Api, data: st.DataObject
) -> None:
    """Schemathesis cases, valid and invalid for the schema, for every documented operation.

    The pytest plugin (``schemathesis.pytest.from_fixture``) does not work with pytest 9 (it sets
    ``node._nodeid``), so the cases are drawn here, per operation, with Schemathesis' strategies.
    """
    method, path = data.draw(st.sampled_from(api.operations), label="operation")
    mode = data.draw(st.sampled_from(list(GenerationMode)), label="mode")
    case = data.draw(api.schema[path][method].as_strategy(generation_mode=mode), label="case")
    # The schema documents only "200 Successful Response": conformance checks would flag every
    # FHIR error, so only server errors are checked by Schemathesis, the error shape here.
    response = case.call_and_validate(checks=[not_a_server_error])
    event(f"{method} {path} -> {response.status_code}")
    if response.status_code >= 400 and case.method.upper() != "HEAD":
        assert not _LEAKS.search(response.text), response.text[:400]
        body = orjson.loads(response.content)
        assert body["resourceType"] == "OperationOutcome", response.text[:400]
        assert body["issue"][0]["severity"] == "error", response.text[:400]
    assert_serving(client)
