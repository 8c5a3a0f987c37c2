"""Address families: AFI and SAFI numbers (RFC 4760 §5, IANA registries)."""

from __future__ import annotations

from enum import IntEnum


class AFI(IntEnum):
    """Address Family Identifier (IANA "Address Family Numbers")."""

    IPV4 = 1
    IPV6 = 2


class SAFI(IntEnum):
    """Subsequent Address Family Identifier (RFC 4760 §6, IANA SAFI registry).

    Only UNICAST NLRI are decoded into prefixes; the others are named for logging and for
    capabilities, and unknown values travel as plain ints.
    """

    UNICAST = 1
    MULTICAST = 2
    MPLS_LABEL = 4
    MPLS_VPN = 128
    FLOWSPEC = 133


Family = tuple[AFI, SAFI]

IPV4_UNICAST: Family = (AFI.IPV4, SAFI.UNICAST)
IPV6_UNICAST: Family = (AFI.IPV6, SAFI.UNICAST)


def family_name(afi: int, safi: int) -> str:
    """``"ipv4-unicast"`` style name; unknown numbers print as numbers."""
    try:
        a = AFI(afi).name.lower()
    except ValueError:
        a = f"afi{afi}"
    try:
        s = SAFI(safi).name.lower().replace("_", "-")
    except ValueError:
        s = f"safi{safi}"
    return f"{a}-{s}"
