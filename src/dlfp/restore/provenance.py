"""SHIM (issue 15 wave 2 removes it): old import path of dlfp.photos.provenance (nothing outside it imports it)."""

from dlfp.photos.provenance import DIGITAL_SOURCE_TYPE, xmp_packet

__all__ = ["DIGITAL_SOURCE_TYPE", "xmp_packet"]
