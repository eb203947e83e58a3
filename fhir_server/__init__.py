"""The Medi-KUS record core: a FHIR R4 server (https://hl7.org/fhir/R4/http.html).

Kept import-light on purpose: ``fhir_server.core`` is the server (``RecordCore``), and the feature
packages talk to it over FHIR/HTTP only.
"""

__all__: list[str] = []
