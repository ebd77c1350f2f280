"""The provenance label every image written by `dlfp restore` carries: an XMP packet (issue 16).

IPTC's digital source type `compositeWithTrainedAlgorithmicMedia` says the image mixes captured content with
output of a trained model; `xmp:CreatorTool` names dl-fp and its version; dl-fp's own namespace adds the weights'
sha256 and the restored face boxes, so a reader can tell which regions are synthetic. The packet is built with
ElementTree, so every value is XML-escaped. No C2PA signature (issue 16 makes it optional).

A library: imports the standard library only.
"""

from __future__ import annotations

import importlib.metadata
import xml.etree.ElementTree as ET
from collections.abc import Sequence

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "dlfp": "https://github.com/dl-fp/dl-fp/ns/provenance/1.0/",
}
LABEL_NOTE = ("Every image written here carries an XMP label: IPTC digital source type "
              "compositeWithTrainedAlgorithmicMedia, the creator tool (dl-fp and its version), the weights' sha256 "
              "and the restored face boxes.")
# The XMP packet wrapper (XMP spec part 1, 7.3); its id is the fixed value the spec prescribes.
_PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
_PACKET_END = '<?xpacket end="r"?>'

for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)


def creator_tool() -> str:
    """'dl-fp <version>' from the installed distribution's metadata."""
    try:
        version = importlib.metadata.version("dlfp")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"dl-fp {version}"


def _tag(qualified: str) -> str:
    prefix, local = qualified.split(":")
    return f"{{{NS[prefix]}}}{local}"


def xmp_packet(*, weights_sha256: str, faces: Sequence[tuple[int, int, int, int]], role: str) -> bytes:
    """The XMP packet (UTF-8) for one output image.

    `faces`: restored face boxes (left, top, right, bottom) in this image's pixels, each written as 'l,t,r,b'.
    `role`: what the image is (restored photo, face crop before/after restoration)."""
    meta = ET.Element(_tag("x:xmpmeta"))
    rdf = ET.SubElement(meta, _tag("rdf:RDF"))
    description = ET.SubElement(rdf, _tag("rdf:Description"), {_tag("rdf:about"): ""})
    ET.SubElement(description, _tag("Iptc4xmpExt:DigitalSourceType")).text = DIGITAL_SOURCE_TYPE
    ET.SubElement(description, _tag("xmp:CreatorTool")).text = creator_tool()
    ET.SubElement(description, _tag("dlfp:WeightsSHA256")).text = weights_sha256
    ET.SubElement(description, _tag("dlfp:Role")).text = role
    sequence = ET.SubElement(ET.SubElement(description, _tag("dlfp:RestoredFaces")), _tag("rdf:Seq"))
    for box in faces:
        ET.SubElement(sequence, _tag("rdf:li")).text = ",".join(str(int(value)) for value in box)
    body = ET.tostring(meta, encoding="unicode")
    return f"{_PACKET_BEGIN}{body}{_PACKET_END}".encode()
