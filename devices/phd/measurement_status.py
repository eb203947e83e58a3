"""Measurement status bits → dataAbsentReason, interpretation and the HTEST security label.

IG: http://hl7.org/fhir/uv/phd/StructureDefinition-PhdBaseObservation.html ("Measurement Status")
— invalid → dataAbsentReason error, not-available → not-performed, msmt-ongoing → temp-unknown,
questionable / calibration-ongoing / validated-data / early-indication → interpretation (POCD
measurement-status), test or demo data → meta.security HTEST; status stays "final". The PLX
service's Measurement Status bits (PLXS 1.0.1 §3.1.1.4) are transcoded to those.
"""

from __future__ import annotations

from dataclasses import dataclass

# PLX Measurement Status bit → (dataAbsentReason, interpretation, test data)
_PLX_BITS: dict[int, tuple[str | None, str | None, bool]] = {
    5: ("temp-unknown", None, False),  # measurement ongoing
    6: (None, "early-indication", False),  # early estimated data
    7: (None, "validated-data", False),
    10: (None, None, True),  # data for demonstration
    11: (None, None, True),  # data for testing
    12: (None, "calibration-ongoing", False),
    13: ("not-performed", None, False),  # measurement unavailable
    14: (None, "questionable", False),
    15: ("error", None, False),  # invalid measurement detected
}
# When several reasons apply, the gravest replaces the value.
_GRAVITY = ("error", "not-performed", "temp-unknown")


@dataclass(frozen=True)
class StatusEffects:
    """What a measurement status does to an Observation."""

    absent_reason: str | None = None  # replaces the value when set
    interpretations: tuple[str, ...] = ()
    test_data: bool = False


NONE = StatusEffects()


def plx_status(raw: int | None) -> StatusEffects:
    """The effects of a PLX Spot-check/Continuous Measurement Status field (None = absent)."""
    if not raw:
        return NONE
    reasons, interpretations, test = [], [], False
    for bit, (reason, interpretation, is_test) in _PLX_BITS.items():
        if raw >> bit & 1:
            reasons += [reason] if reason else []
            interpretations += [interpretation] if interpretation else []
            test = test or is_test
    absent = next((r for r in _GRAVITY if r in reasons), None)
    return StatusEffects(absent, tuple(interpretations), test)
