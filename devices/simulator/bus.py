"""A private D-Bus daemon standing in for the system bus (https://dbus.freedesktop.org/doc/dbus-daemon.1.html)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess  # nosec B404 # starts only dbus-daemon for the simulation
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devices.simulator.errors import SimulatorError

DBUS_DAEMON = "/usr/bin/dbus-daemon"

# Everyone may own any name and talk to anyone: this bus only carries the simulation.
_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true"/>
    <allow receive_requested_reply="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """A running ``dbus-daemon``; ``address`` goes into ``DBUS_SYSTEM_BUS_ADDRESS``."""

    def __init__(self, process: subprocess.Popen[str], directory: Path, address: str) -> None:
        self.process = process
        self.directory = directory
        self.address = address

    @classmethod
    def start(cls, daemon: str = DBUS_DAEMON) -> PrivateBus:
        """Start the daemon on a unix socket in a fresh temporary directory."""
        directory = Path(tempfile.mkdtemp(prefix="medikus-dbus-"))
        config = directory / "bus.conf"
        config.write_text(_CONFIG.format(socket=directory / "bus"), encoding="utf-8")
        process = subprocess.Popen(  # nosec B603 # fixed argv (dbus-daemon, our config), no shell
            [daemon, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        address = process.stdout.readline().strip() if process.stdout is not None else ""
        if not address:
            process.kill()
            process.wait()
            shutil.rmtree(directory, ignore_errors=True)
            raise SimulatorError(
                "dbus-daemon hat keine Adresse ausgegeben / dbus-daemon printed no address"
            )
        return cls(process, directory, address)

    def stop(self) -> None:
        """Terminate the daemon and remove its socket directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def private_bus(daemon: str = DBUS_DAEMON) -> Iterator[str]:
    """Run a private bus for the ``with`` block and yield its address."""
    bus = PrivateBus.start(daemon)
    try:
        yield bus.address
    finally:
        bus.stop()
