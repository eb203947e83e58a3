"""D-Bus signatures as ``typing.Annotated`` types for dbus-fast service methods (https://dbus.freedesktop.org/doc/dbus-specification.html#type-system)."""

from __future__ import annotations

from typing import Annotated

from dbus_fast import Variant
from dbus_fast.annotations import DBusSignature

# dbus-fast reads a postponed "-> None" as the literal None, not as "no reply values"
NoReply = Annotated[None, DBusSignature("")]
DBusStrings = Annotated[list[str], DBusSignature("as")]
DBusByteArrays = Annotated[list[bytes], DBusSignature("aay")]
DBusManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
