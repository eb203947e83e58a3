"""Standard BLE health devices as simulated peripherals (GATT services BPS, HTS, PLXS, WSS, GLS, HRS, DIS, BAS, CTS: https://www.bluetooth.com/specifications/specs/)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from devices.simulator.errors import AttError, SimulatorError
from devices.simulator.model import Characteristic, Clock, DeviceClock, Peripheral, Service
from devices.simulator.payloads import current_time, parse_current_time, uuid
from devices.simulator.racp import RecordStore

ATT_INVALID_LENGTH = 0x0D
CTS_WRITE_REFUSED = 0x80  # what Omron cuffs answer (hass-omron #11: "GATT error 128")

KINDS = (
    "blood_pressure",
    "thermometer",
    "pulse_oximeter",
    "weight_scale",
    "glucose_meter",
    "heart_rate",
)


@dataclass(frozen=True)
class DeviceConfig:
    """One simulated device; everything but kind and address has a plausible default."""

    kind: str
    address: str
    name: str = ""
    pin: str | None = None
    pairing_method: str = "passkey"  # or "pin"
    clock_offset: timedelta | None = timedelta(0)  # device clock − station clock; None = unset
    cts_writable: bool = True
    racp: bool = False  # pulse oximeter only: stored spot-checks behind RACP
    rssi: int = -60
    battery_level: int = 87
    manufacturer: str = "Medi-KUS Simulator"
    model: str = ""
    serial: str = ""
    hardware_revision: str = "1.0"
    firmware_revision: str = "2.1.0"
    software_revision: str = "2.1"
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SimulatorError(f"unbekannte Geräteart / unknown device kind: {self.kind}")
        if self.pairing_method not in ("passkey", "pin"):
            raise SimulatorError(f"pairing_method: passkey | pin, not {self.pairing_method}")
        if len(bytes.fromhex(self.address.replace(":", ""))) != 6:
            raise SimulatorError(f"keine Bluetooth-Adresse / not an address: {self.address}")


class CurrentTimeServer:
    """CTS 0x2A2B on the device clock; writes are taken or refused (mutable at run time)."""

    def __init__(self, clock: DeviceClock, writable: bool) -> None:
        self.clock = clock
        self.writable = writable

    def characteristic(self) -> Characteristic:
        return Characteristic(
            uuid(0x2A2B),
            ("read", "notify", "write"),
            protected=True,
            on_read=lambda: current_time(self.clock.now()),
            on_write=self.write,
        )

    def write(self, data: bytes) -> None:
        if not self.writable:
            raise AttError(CTS_WRITE_REFUSED)
        try:
            self.clock.set(parse_current_time(data))
        except SimulatorError as exc:
            raise AttError(ATT_INVALID_LENGTH) from exc


@dataclass(eq=False)
class SimulatedDevice:
    config: DeviceConfig
    peripheral: Peripheral
    current_time: CurrentTimeServer
    records: RecordStore | None = None


def system_id(address: str) -> bytes:
    """System ID (0x2A23): u40 manufacturer identifier + u24 OUI, both little-endian, from the MAC."""
    mac = bytes.fromhex(address.replace(":", ""))
    manufacturer = int.from_bytes(mac[3:], "big") | (0xFFFE << 24)
    return manufacturer.to_bytes(5, "little") + int.from_bytes(mac[:3], "big").to_bytes(3, "little")


def _read(number: int, value: bytes, *, protected: bool = False) -> Characteristic:
    return Characteristic(uuid(number), ("read",), value, protected=protected)


def _push(number: int, how: str) -> Characteristic:
    return Characteristic(uuid(number), (how,), protected=True)


def _device_information(config: DeviceConfig) -> Service:
    strings = {
        0x2A29: config.manufacturer,
        0x2A24: config.model or config.kind.replace("_", "-"),
        0x2A25: config.serial or config.address.replace(":", "")[-8:],
        0x2A27: config.hardware_revision,
        0x2A26: config.firmware_revision,
        0x2A28: config.software_revision,
    }
    chars = [_read(number, text.encode()) for number, text in strings.items()]
    chars.append(_read(0x2A23, system_id(config.address)))
    return Service(uuid(0x180A), chars)


def _battery(config: DeviceConfig) -> Service:
    level = Characteristic(uuid(0x2A19), ("read", "notify"), bytes([config.battery_level]))
    return Service(uuid(0x180F), [level])


def _health_service(config: DeviceConfig) -> tuple[Service, str | None]:
    """The device's measurement service and the record characteristic behind RACP, if any."""
    layouts: dict[str, Callable[[], tuple[int, list[Characteristic], int | None]]] = {
        "blood_pressure": lambda: (
            0x1810,
            [_push(0x2A35, "indicate"), _push(0x2A36, "notify"), _read(0x2A49, b"\x07\x00")],
            None,
        ),
        "thermometer": lambda: (
            0x1809,
            [_push(0x2A1C, "indicate"), _read(0x2A1D, b"\x06"), _push(0x2A1E, "notify")],
            None,
        ),
        "pulse_oximeter": lambda: (
            0x1822,
            [
                _push(0x2A5E, "indicate"),
                _push(0x2A5F, "notify"),
                _read(0x2A60, b"\x04\x00" if config.racp else b"\x00\x00"),
            ],
            0x2A5E if config.racp else None,
        ),
        "weight_scale": lambda: (
            0x181D,
            [_push(0x2A9D, "indicate"), _read(0x2A9E, struct.pack("<I", 0x39))],
            None,
        ),
        "glucose_meter": lambda: (
            0x1808,
            [_push(0x2A18, "notify"), _push(0x2A34, "notify"), _read(0x2A51, b"\x00\x00")],
            0x2A18,
        ),
        "heart_rate": lambda: (0x180D, [_push(0x2A37, "notify"), _read(0x2A38, b"\x01")], None),
    }
    number, chars, record = layouts[config.kind]()
    return Service(uuid(number), chars), uuid(record) if record is not None else None


def build(config: DeviceConfig, station_clock: Clock) -> SimulatedDevice:
    """The peripheral for a configuration, with its record store when it has RACP."""
    clock = DeviceClock(station_clock, config.clock_offset)
    health, record_uuid = _health_service(config)
    peripheral = Peripheral(
        address=config.address.upper(),
        name=config.name or config.kind.replace("_", " ").title(),
        kind=config.kind,
        services=[health, _device_information(config), _battery(config)],
        clock=clock,
        pin=config.pin,
        pairing_method=config.pairing_method,
        rssi=config.rssi,
        manufacturer_data=dict(config.manufacturer_data),
        advertised_uuids=(health.uuid,),
    )
    cts = CurrentTimeServer(clock, config.cts_writable)
    peripheral.services.append(Service(uuid(0x1805), [cts.characteristic()]))
    records = None
    if record_uuid is not None:
        context = uuid(0x2A34) if config.kind == "glucose_meter" else None
        records = RecordStore(peripheral, record_uuid, context)
        health.characteristics.append(records.characteristic())
        peripheral.on_disconnect.append(records.reset)
    return SimulatedDevice(config, peripheral, cts, records)
