"""Which FHIR R4 resource types the record core stores (https://hl7.org/fhir/R4/resourcelist.html).

The R4 list comes from the official Patient CompartmentDefinition, which names every R4 resource
type. Types that R4B dropped (MedicinalProduct*, SubstanceSpecification, Effect-/RiskEvidenceSynthesis)
cannot be validated with the R4B models and are refused (as are the Substance* definitional
types R4B dropped); so is Evidence, whose shape R4B changed.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import orjson

# R4 types without an R4B model of the same shape, and why they are refused.
REFUSED = {
    "Parameters": "it only carries operation parameters and has no RESTful endpoint of its own",
    "Evidence": "its structure changed incompatibly between R4 and R4B",
    "EffectEvidenceSynthesis": "the type does not exist after R4",
    "RiskEvidenceSynthesis": "the type does not exist after R4",
    "SubstanceSpecification": "the type does not exist after R4",
    "SubstanceNucleicAcid": "the type does not exist after R4",
    "SubstancePolymer": "the type does not exist after R4",
    "SubstanceProtein": "the type does not exist after R4",
    "SubstanceReferenceInformation": "the type does not exist after R4",
    "SubstanceSourceMaterial": "the type does not exist after R4",
    "MedicinalProduct": "the type does not exist after R4",
    "MedicinalProductAuthorization": "the type does not exist after R4",
    "MedicinalProductContraindication": "the type does not exist after R4",
    "MedicinalProductIndication": "the type does not exist after R4",
    "MedicinalProductIngredient": "the type does not exist after R4",
    "MedicinalProductInteraction": "the type does not exist after R4",
    "MedicinalProductManufactured": "the type does not exist after R4",
    "MedicinalProductPackaged": "the type does not exist after R4",
    "MedicinalProductPharmaceutical": "the type does not exist after R4",
    "MedicinalProductUndesirableEffect": "the type does not exist after R4",
}


@cache
def r4_types() -> frozenset[str]:
    path = resources.files("fhir_server") / "definitions" / "compartmentdefinition-patient.json"
    definition = orjson.loads(path.read_bytes())
    # Parameters is an R4 type outside every compartment, so the definition does not list it.
    return frozenset(entry["code"] for entry in definition["resource"]) | {"Parameters"}


@cache
def supported_types() -> frozenset[str]:
    return r4_types() - REFUSED.keys()
