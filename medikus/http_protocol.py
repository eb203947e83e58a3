"""Uvicorn's HTTP protocol with FHIR error bodies for requests it cannot parse.

A request line beyond the HTTP parser's limits (e.g. a 10 MB query string) never reaches the app;
uvicorn answers it with a plain-text 400. FHIR clients expect an OperationOutcome
(https://hl7.org/fhir/R4/http.html#ops), so the protocol sends one instead.
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_OUTCOME = orjson.dumps(
    {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "Die Anfrage ist ungültig oder zu lang / "
                "the HTTP request is malformed or too long.",
            }
        ],
    }
)


class FhirHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        head = (
            b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/fhir+json; charset=utf-8\r\n"
            b"content-length: " + str(len(_OUTCOME)).encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + _OUTCOME)
        self.transport.close()
