"""Pilot-centre station: Bluetooth LE medical devices to FHIR Observations (station issue)."""

__all__: list[str] = []
