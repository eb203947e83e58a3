"""Device Information Service strings, System ID (0x2A23), PnP ID (0x2A50); Battery Level (0x2A19).

Spec: https://www.bluetooth.com/specifications/specs/device-information-service-1-1/
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.errors import ParseError
from devices.gatt import uuids
from devices.gatt._reader import Reader


def parse_string(data: bytes, characteristic: str) -> str:
    """A DIS UTF-8 string (2A24–2A29); trailing NULs, which some devices pad with, are dropped."""
    try:
        return bytes(data).decode("utf-8").rstrip("\x00")
    except UnicodeDecodeError as exc:
        raise ParseError(
            characteristic, f"Kein gültiges UTF-8 / not valid UTF-8: {exc.reason}", data
        ) from exc


@dataclass(frozen=True)
class SystemId:
    """2A23: 40-bit manufacturer-defined identifier and 24-bit OUI, both little-endian on air."""

    manufacturer_id: int
    oui: int

    def __bytes__(self) -> bytes:
        return self.manufacturer_id.to_bytes(5, "little") + self.oui.to_bytes(3, "little")

    def fhir_value(self) -> str:
        """The PHD SYSID identifier value in ON-AIR byte order, as the IG's Omron example.

        E.g. on-air ``71 10 00 FE FF 5F 49 B0`` → ``71-10-00-FE-FF-5F-49-B0`` (not the
        OUI-first EUI-64 ``B0-49-5F-FF-FE-00-10-71`` that the Nonin example uses).
        """
        return "-".join(f"{byte:02X}" for byte in bytes(self))


def parse_system_id(data: bytes) -> SystemId:
    """2A23: exactly 8 bytes."""
    reader = Reader(data, uuids.SYSTEM_ID)
    system_id = SystemId(manufacturer_id=reader.uint(5), oui=reader.uint(3))
    reader.finish()
    return system_id


@dataclass(frozen=True)
class PnpId:
    """2A50: vendor ID source 1 = Bluetooth SIG, 2 = USB-IF; version is 0xJJMN (major.minor.sub)."""

    vendor_id_source: int
    vendor_id: int
    product_id: int
    product_version: int


def parse_pnp_id(data: bytes) -> PnpId:
    """2A50: exactly 7 bytes."""
    reader = Reader(data, uuids.PNP_ID)
    pnp_id = PnpId(reader.u8(), reader.u16(), reader.u16(), reader.u16())
    reader.finish()
    return pnp_id


def parse_battery_level(data: bytes) -> int:
    """2A19: exactly 1 byte, 0–100 %; 101–255 are reserved and rejected."""
    reader = Reader(data, uuids.BATTERY_LEVEL)
    level = reader.u8()
    reader.finish()
    if level > 100:
        raise reader.error(f"Batteriestand {level} % über 100 / battery level {level} % above 100")
    return level
