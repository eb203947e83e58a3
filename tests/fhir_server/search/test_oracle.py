"""Differential test: the compiled evaluators against the fhirpathpy interpreter.

For every example resource (and some of each type in a Synthea bundle), every applicable search
parameter's expression is evaluated both ways and the selected values must be
the same set (https://hl7.org/fhir/R4/searchparameter.html#expression).
fhirpathpy cannot ``resolve()`` and does not treat ``Resource.`` as a wildcard
root, so the oracle's expression is rewritten for those two, equivalently.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fhirpathpy
import orjson
import pytest
from fhirpathpy.models import models as fhirpath_models

from fhir_server.search import Indexer, SearchParamDef, SearchParamRegistry
from fhir_server.search.compiler import Compiled, compile_expression, evaluate
from fhir_server.search.values import make_reference_parser

R4 = fhirpath_models["r4"]

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "tests" / "data" / "fhir-r4-examples"
SYNTHEA_BUNDLE = ROOT / "medikus" / "demo_data" / "synthea-r4" / "patient-001.json.gz"
PARSE_REFERENCE = make_reference_parser(SearchParamRegistry.load().resource_types)
_RESOLVE = re.compile(r"where\(resolve\(\) is (\w+)\)")


def resources() -> Iterator[dict[str, Any]]:
    for path in sorted(EXAMPLES.glob("*.json")):
        yield orjson.loads(path.read_bytes())
    # A few of each Synthea type: fhirpathpy needs ~0.2 s per big Claim/EOB.
    bundle = orjson.loads(gzip.decompress(SYNTHEA_BUNDLE.read_bytes()))
    seen: Counter[str] = Counter()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        seen[resource["resourceType"]] += 1
        if seen[resource["resourceType"]] <= 5:
            yield resource


def oracle_expression(expression: str, resource_type: str) -> str:
    expression = re.sub(r"\b(Resource|DomainResource)\.", f"{resource_type}.", expression)
    literal = r"(^|/)\1/[A-Za-z0-9.-]+(/_history/[A-Za-z0-9.-]+)?$"
    return _RESOLVE.sub(f"where(reference.matches('{literal}'))", expression)


def canonical(values: list[Any]) -> set[bytes]:
    return {orjson.dumps(v, option=orjson.OPT_SORT_KEYS, default=float) for v in values}


def mine(compiled: Compiled, resource: dict[str, Any]) -> list[Any]:
    if compiled.predicate is not None:
        result = compiled.predicate(resource)
        return [] if result is None else [result]
    return [value for plan in compiled.plans for value in evaluate(plan, resource)]


def applicable(
    registry: SearchParamRegistry, indexer: Indexer, resource_type: str
) -> Iterator[tuple[SearchParamDef, Compiled]]:
    skipped = {(u.resource_type, u.code) for u in indexer.unsupported}
    for param in registry.params_for(resource_type).values():
        if param.type == "composite" or param.expression is None:
            continue
        if (resource_type, param.code) in skipped:
            continue
        compiled = compile_expression(
            param.expression,
            resource_type,
            registry.choice_elements,
            registry.resource_types,
            PARSE_REFERENCE,
        )
        yield param, compiled


@pytest.mark.slow
def test_compiled_expressions_match_fhirpathpy() -> None:
    registry = SearchParamRegistry.load()
    indexer = Indexer(registry)
    compared = 0
    mismatches: list[str] = []
    for resource in resources():
        resource_type = resource["resourceType"]
        for param, compiled in applicable(registry, indexer, resource_type):
            assert param.expression is not None
            expression = oracle_expression(param.expression, resource_type)
            expected = fhirpathpy.evaluate(resource, expression, {}, R4)
            if canonical(mine(compiled, resource)) != canonical(expected):
                mismatches.append(f"{resource_type}/{resource.get('id')} {param.code}")
            compared += 1
    assert mismatches == []
    assert compared > 7_000
