"""Structural validation of resources with the ``fhir.resources`` R4B models.

https://hl7.org/fhir/R4/validation.html — the only module that imports ``fhir.resources``: it is
slow to import and to run (0.1–0.5 ms per resource), so it is used once, on write, and never on reads.
Because the stored JSON is the client's JSON (not a re-serialised model), the JSON types of
primitives are checked too: the models coerce ``"yes"`` to true. (Control characters, which FHIR
strings must not contain, are refused when the body is parsed: ``request.parse_json``.)
"""

from __future__ import annotations

import decimal
import types
import typing
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhir_server import fhir_json
from fhir_server.errors import Category, FhirError, Issue

_MAX_ISSUES = 20
_JSON_KIND: dict[Any, str] = {bool: "boolean", int: "integer", decimal.Decimal: "decimal"}
# element alias -> (kind, model class for complex elements)
Table = dict[str, tuple[str, Any]]


class ResourceValidator:
    """Validates a parsed resource against its R4B model; raises FhirError(UNPROCESSABLE)."""

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self._tables: dict[Any, Table] = {}

    def warm_up(self, types: frozenset[str]) -> None:
        """Imports every model now, so the first requests of a worker are not slow."""
        for rtype in types:
            self._model(rtype)

    def _model(self, rtype: str) -> Any:
        model = self._models.get(rtype)
        if model is None:
            model = self._models[rtype] = get_fhir_model_class(rtype)
        return model

    def elements(self, rtype: str) -> tuple[frozenset[str], frozenset[str]]:
        """The JSON names of the summary and of the mandatory top-level elements of ``rtype``
        (``_summary``/``_elements``, https://hl7.org/fhir/R4/search.html#summary)."""
        summary, mandatory = set(), set()
        for name, field in self._model(rtype).model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            alias = field.alias or name
            if extra.get("summary_element_property"):
                summary.add(alias)
            if extra.get("element_required"):
                mandatory.add(alias)
        return frozenset(summary), frozenset(mandatory)

    def validate(self, resource: dict[str, Any]) -> None:
        rtype = resource["resourceType"]
        model = self._model(rtype)
        try:
            model.model_validate(resource)
        except ValidationError as exc:
            raise _unprocessable(rtype, exc) from exc
        except RecursionError as exc:
            raise FhirError(
                Category.UNPROCESSABLE, f"The {rtype} resource is nested too deeply."
            ) from exc
        except Exception as exc:  # the models raise assorted errors on odd input; all mean invalid
            raise FhirError(
                Category.UNPROCESSABLE, f"The {rtype} resource is not valid FHIR R4."
            ) from exc
        self._check_json_types(resource, model)

    def _check_json_types(self, resource: dict[str, Any], model: Any) -> None:
        """Primitives must have their JSON type (https://hl7.org/fhir/R4/json.html#primitive)."""
        stack: list[tuple[Any, Table]] = [(resource, self._table(model))]
        while stack:
            node, table = stack.pop()
            for key, value in node.items():
                entry = table.get(key)
                if entry is None:
                    continue
                kind, sub = entry
                for item in value if type(value) is list else (value,):
                    if item is None:
                        continue
                    if kind == "complex" or kind == "resource":
                        if type(item) is dict:
                            target = (
                                self._model(item["resourceType"]) if kind == "resource" else sub
                            )
                            stack.append((item, self._table(target)))
                    elif not _is_kind(item, kind):
                        raise FhirError(
                            Category.UNPROCESSABLE,
                            f"{resource['resourceType']}: element '{key}' must be a JSON {_JSON_NAME[kind]}, "
                            f"not {type(item).__name__} {fhir_json.dumps(item).decode()[:40]}.",
                            expression=(key,),
                        )

    def _table(self, model: Any) -> Table:
        table = self._tables.get(model)
        if table is None:
            kinds = {
                field.alias or name: _kind(field.annotation)
                for name, field in model.model_fields.items()
            }
            # pydantic refuses non-strings for str fields; only booleans and numbers get coerced,
            # so strings need no second look (most values are strings: this halves the walk).
            table = self._tables[model] = {k: v for k, v in kinds.items() if v[0] != "string"}
        return table


_JSON_NAME = {"boolean": "boolean", "integer": "integer", "decimal": "number", "string": "string"}


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "string":
        return type(value) is str
    if kind == "boolean":
        return type(value) is bool
    if kind == "integer":
        return type(value) is int
    # Decimal: numbers whose digits a float would change (fhir_server/fhir_json.py).
    return type(value) is int or type(value) is float or isinstance(value, decimal.Decimal)


def _kind(annotation: Any) -> tuple[str, Any]:
    """The JSON kind of a model field: unwraps Optional, List and Annotated."""
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        elif origin in (list, typing.Annotated):
            annotation = typing.get_args(annotation)[0]
        else:
            break
    if annotation in _JSON_KIND:
        return _JSON_KIND[annotation], None
    get_model = getattr(annotation, "get_model_klass", None)
    if get_model is None:
        return "string", None  # str, dates, times, base64 bytes: all JSON strings
    klass = get_model()
    if klass.__name__ in ("Resource", "DomainResource"):
        return "resource", None
    return "complex", klass


def _unprocessable(rtype: str, exc: ValidationError) -> FhirError:
    issues = []
    for error in exc.errors()[:_MAX_ISSUES]:
        path = ".".join(str(p) for p in error["loc"] if p != "__root__")
        where = f"{rtype}.{path}" if path else rtype
        issues.append(
            Issue("error", _issue_code(error["type"]), f"{where}: {error['msg']}", (where,))
        )
    summary = f"The {rtype} resource is not valid FHIR R4 ({exc.error_count()} error(s))."
    return FhirError(
        Category.UNPROCESSABLE, summary, issues=(Issue("error", "processing", summary), *issues)
    )


def _issue_code(error_type: str) -> str:
    if error_type == "extra_forbidden":
        return "structure"
    if error_type == "missing":
        return "required"
    return "value"
