"""docs/status.md ("Router") documents the JSON of `bgplb status --role router` field by field;
this test compares those tables with the dataclasses of bgplb.router.status, with the example
in the doc and with the document a running router answers on its control socket, so a field
added, removed or renamed on one side only fails here. The tables of `bgplb status` are rendered
from that same document."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from test_daemon_supervision import VIP, Lab
from test_pinning_runtime import VIP1, A, MemoryPins, make_router, nexthop, sync

from bgplb.bgp.attributes import PathAttributes
from bgplb.bgp.families import IPV4_UNICAST
from bgplb.bgp.prefix import Prefix
from bgplb.cli_router import render_status
from bgplb.linux.memfib import MemoryFib, MemoryKernel
from bgplb.router import status as status_module
from bgplb.router.status import plain

DOC = Path(__file__).resolve().parents[3] / "docs" / "status.md"


def documented() -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """(class name -> field names, {(class, field) marked *optional*}), from the '### `Name`'
    tables under '## Router'."""
    text = DOC.read_text()
    match = re.search(r"^## Router\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "docs/status.md has no '## Router' section"
    out: dict[str, list[str]] = {}
    optional: set[tuple[str, str]] = set()
    current: list[str] | None = None
    name = ""
    for line in match.group(1).splitlines():
        if heading := re.match(r"^### `(\w+)`", line):
            name = heading.group(1)
            current = out.setdefault(name, [])
        elif line.startswith("### "):
            current = None
        elif current is not None and (row := re.match(r"^\| `(\w+)` \|", line)):
            current.append(row.group(1))
            if "*optional*" in line:
                optional.add((name, row.group(1)))
    return out, optional


def classes() -> dict[str, list[str]]:
    """Every dataclass of bgplb.router.status -> its fields in document order (role first)."""
    out = {}
    for name, value in vars(status_module).items():
        if dataclasses.is_dataclass(value) and isinstance(value, type):
            fields = [f.name for f in dataclasses.fields(value)]
            if "role" in fields:  # to_json() puts it first
                fields.remove("role")
                fields.insert(0, "role")
            out[name] = fields
    return out


def check(obj: object, name: str) -> None:
    """`obj` (a JSON object) has the fields documented for `name`, in order; optional ones may
    be absent."""
    docs, optional = documented()
    assert isinstance(obj, dict), f"{name}: {obj!r}"
    expected = [f for f in docs[name] if f in obj or (name, f) not in optional]
    assert list(obj) == expected, f"{name}: document {list(obj)} != docs/status.md {expected}"


def test_every_status_class_and_field_is_documented_in_order() -> None:
    docs, optional = documented()
    code = classes()
    assert sorted(docs) == sorted(code), "documented objects differ from bgplb.router.status"
    for name, fields in code.items():
        assert docs[name] == fields, f"{name}: docs/status.md {docs[name]} != code {fields}"
    # what the doc calls optional is what the code leaves out while None, and nothing else
    marked = {
        (name, f.name)
        for name, cls in vars(status_module).items()
        if dataclasses.is_dataclass(cls) and isinstance(cls, type)
        for f in dataclasses.fields(cls)
        if f.metadata.get("optional")
    }
    assert optional == marked


def test_optional_fields_are_left_out_while_none() -> None:
    off = status_module.PinningStatus(enabled=False)
    assert plain(off) == {"enabled": False}
    on = status_module.PinningStatus(enabled=True, servers=(), refused=())
    assert plain(on) == {"enabled": True, "servers": [], "refused": []}


def test_a_real_status_document_has_exactly_the_documented_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> dict[str, Any]:
        async with Lab(tmp_path, monkeypatch) as lab:
            router = lab.router
            # a resilient FIB in memory: the page's bucket shares are read
            router.kernel._open_fib(MemoryFib(MemoryKernel(), buckets=16))
            client = await lab.client(2)
            client.announce(VIP)
            await asyncio.sleep(0)
            rib = router.rib
            vip = Prefix.parse(VIP)
            # a path the FIB cannot use (its next hop is in no connected subnet)
            rib.peer_up("192.0.2.60", 0.0, asn=65060)
            far = PathAttributes(next_hop=ipaddress.IPv4Address("203.0.113.1"))
            rib.update("192.0.2.60", [vip], far, [], 0.0)
            # a neighbor gone whose paths are kept stale (Graceful Restart)
            now = asyncio.get_running_loop().time()
            rib.peer_up("192.0.2.50", now, asn=65050, restart_time=120, gr_families=[IPV4_UNICAST])
            near = PathAttributes(next_hop=ipaddress.IPv4Address("192.0.2.50"))
            rib.update("192.0.2.50", [Prefix.parse("198.51.100.20/32")], near, [], now)
            rib.peer_down("192.0.2.50", now, graceful=True)
            await lab.status()  # the page is cached: the next answer has the new VIPs
            for _ in range(200):
                st = await lab.status()
                if st["vips"] and st["vips"][0]["nexthops"] and st["vips_total"] == 2:
                    break
                await asyncio.sleep(0.02)
            router.kernel._close_fib()
            return st

    document = asyncio.run(main())
    json.dumps(document)
    check(document, "RouterStatus")
    check(document["fib"], "FibStatus")
    assert document["fib"]["bucket_shares"] is not None
    check(document["fib"]["bucket_shares"], "BucketShares")
    check(document["peer_ranges"][0], "PeerRangeStatus")
    live = [p for p in document["peers"] if p["state"] != "restarting"]
    gone = [p for p in document["peers"] if p["state"] == "restarting"]
    assert live and gone
    check(live[0], "PeerStatus")
    check(gone[0], "RestartingPeerStatus")
    check(document["pinning"], "PinningStatus")
    check(document["queue"], "QueueStatus")
    check(document["counters"], "CounterStatus")
    row = next(r for r in document["vips"] if r["vip"] == VIP)
    check(row, "VipStatus")
    check(row["nexthops"][0], "NexthopStatus")
    check(row["unusable"][0], "UnusablePath")
    assert row["unusable"][0]["next_hop"] == "203.0.113.1"
    # and `bgplb status` renders it
    out = io.StringIO()
    render_status(document, Console(file=out, width=160))
    text = out.getvalue()
    assert "127.0.0.2" in text and VIP in text


def test_the_pinning_document_has_the_documented_keys() -> None:
    pins = MemoryPins()
    router, pinning, _ = make_router(pins)

    async def go() -> None:
        await sync(router, {VIP1: (nexthop(A),)}, 100.0)

    asyncio.run(go())
    document = plain(pinning.status())
    check(document, "PinningStatus")
    assert document["servers"]
    check(document["servers"][0], "PinnedServer")


def test_the_example_in_the_doc_has_the_documented_keys() -> None:
    text = DOC.read_text()
    section = text[text.index("## Router") :]
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))  # type: ignore[union-attr]
    check(example, "RouterStatus")
    check(example["fib"], "FibStatus")
    check(example["fib"]["bucket_shares"], "BucketShares")
    check(example["peer_ranges"][0], "PeerRangeStatus")
    check(example["peers"][0], "PeerStatus")
    check(example["pinning"], "PinningStatus")
    check(example["queue"], "QueueStatus")
    check(example["counters"], "CounterStatus")
    check(example["vips"][0], "VipStatus")
    check(example["vips"][0]["nexthops"][0], "NexthopStatus")
