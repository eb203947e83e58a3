"""Assembles a running station from its configuration: outbox, record client, pairing agent,
device connections, processor and uploader (the ``medikus station run`` process)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from devices.assignment import Assignments
from devices.config import StationConfig
from devices.connection import ConnectionState, DeviceConnection
from devices.credentials import load_key_file
from devices.outbox import Outbox, open_database
from devices.pairing_agent import PairingAgent
from devices.processing import Processor
from devices.profiles import profiles_for
from devices.record_client import RecordClient
from devices.station import Station
from devices.uploader import Uploader

__all__ = ["open_station", "run_station", "utc_now"]

_log = logging.getLogger(__name__)
PURGE_AFTER = timedelta(days=7)  # uploaded readings stay this long on the station, for support


def utc_now() -> datetime:
    return datetime.now(UTC)


def _observe(address: str, state: ConnectionState) -> None:
    _log.info("Gerät / device %s: %s", address, state.value)


@asynccontextmanager
async def open_station(
    config: StationConfig,
    *,
    version: str,
    clock: Callable[[], datetime] = utc_now,
    connect_devices: bool = True,
) -> AsyncIterator[Station]:
    """A station with everything opened; closed again on exit. ``connect_devices=False`` runs
    only the store-and-forward side (tools, tests of the upload path)."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    zone = ZoneInfo(config.time_zone)
    database = open_database(config.state_dir / "station.sqlite3")
    async with AsyncExitStack() as stack:
        stack.callback(database.close)
        outbox = Outbox(database, clock)
        assignments = Assignments(database)
        client = RecordClient(config.record_core, config.client_id, load_key_file(config.key_file))
        stack.push_async_callback(client.aclose)
        kinds = {device.address: device.kind for device in config.devices}
        station = Station(
            outbox=outbox,
            processor=Processor(
                station_id=config.station_id,
                software_version=version,
                kinds=kinds,
                patient_for=lambda a, u, r: assignments.patient_for(a, u, r.received_at),
                zone=zone,
            ),
            uploader=Uploader(
                outbox, client, batch_size=config.batch_size, max_backoff_s=config.max_backoff_s
            ),
            clock=clock,
        )
        station.processor.information = station.device_information
        if connect_devices and config.devices:
            pins = {d.address: d.pin for d in config.devices if d.pin is not None}
            if pins:
                await stack.enter_async_context(PairingAgent(pins))
            station.connections = [
                DeviceConnection(
                    device.address,
                    profiles=profiles_for(device.kind, outbox),
                    sink=station.store,
                    clock=clock,
                    device_zone=zone,
                    pair=device.pin is not None or device.kind == "glucose",
                    observer=_observe,
                    on_information=station.information,
                )
                for device in config.devices
            ]
        yield station
        await station.stop()


async def run_station(config: StationConfig, *, version: str) -> None:
    """Runs until cancelled (SIGTERM/SIGINT end it cleanly: nothing stored is lost)."""
    async with open_station(config, version=version) as station:
        purge = asyncio.create_task(_purge(station))
        try:
            await station.run()
        finally:
            purge.cancel()


async def _purge(station: Station) -> None:
    """Uploaded readings are health data: they do not stay on the station for long."""
    while True:
        before = station.clock() - PURGE_AFTER
        removed = await asyncio.to_thread(station.outbox.purge_uploaded, before)
        if removed:
            _log.info("%d hochgeladene Messwerte gelöscht / uploaded readings purged", removed)
        await asyncio.sleep(3600)
