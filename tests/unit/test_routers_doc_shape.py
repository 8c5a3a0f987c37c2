"""docs/routers.md keeps its shape: every code block the interop test runs
(tests/interop/test_routers_doc.py) is marked, found and not empty, and every router section
answers every point of the page (one `###` subsection each), so a section that loses one fails.

The block extractor is the interop test's own (loaded by path), so what is checked here is what
the interop test will run. (This file is not named test_routers_doc.py: two test modules with
one basename cannot be collected in one pytest run.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import test_routers_doc as interop  # tests/interop is on pytest's pythonpath

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "routers.md"

ROUTERS = ("BIRD 2", "FRR", "Junos", "Arista EOS", "Cisco IOS-XR", "Nokia SR Linux")
PROVIDER = "Your provider"
SUBSECTIONS = (
    "Neighbors",
    "Multipath",
    "BFD",
    "MD5",
    "Graceful shutdown",
    "Max-prefix",
    "Import filter",
    "ECMP hash",
)
#: blocks the interop test runs, and a line each must contain
TESTED = {
    "agent": "[[peers]]",
    "sysctl": "net.ipv4.fib_multipath_hash_policy = 1",
    "bird": "protocol bgp",
    "frr": "router bgp 65530",
}


def sections(text: str) -> dict[str, str]:
    """`## Title` -> the text up to the next `## ` heading (headings inside code blocks are
    not headings)."""
    out: dict[str, str] = {}
    title, body, fence = None, [], False
    for line in text.splitlines():
        if line.startswith(("```", "~~~")):
            fence = not fence
        if not fence and line.startswith("## "):
            if title is not None:
                out[title] = "\n".join(body)
            title, body = line[3:].strip(), []
        elif title is not None:
            body.append(line)
    if title is not None:
        out[title] = "\n".join(body)
    return out


def subsections(body: str) -> list[str]:
    fence = False
    out = []
    for line in body.splitlines():
        if line.startswith(("```", "~~~")):
            fence = not fence
        elif not fence and line.startswith("### "):
            out.append(line[4:].strip())
    return out


@pytest.fixture(scope="module")
def text() -> str:
    return DOC.read_text()


def test_every_tested_block_is_found_and_not_empty(text):
    blocks = interop.doc_blocks(text)
    assert set(TESTED) <= set(blocks), sorted(blocks)
    for name, needle in TESTED.items():
        assert blocks[name].strip(), name
        assert needle in blocks[name], (name, needle)


def test_every_marker_is_followed_by_a_block(text):
    markers = re.findall(r"<!--\s*test:\s*([\w-]+)\s*-->", text)
    assert sorted(markers) == sorted(interop.doc_blocks(text)), markers


def test_extractor_refuses_a_name_used_twice():
    block = "<!-- test: bird -->\n```\nrouter id 192.0.2.1;\n```\n"
    assert interop.doc_blocks(block) == {"bird": "router id 192.0.2.1;\n"}
    with pytest.raises(ValueError, match="two blocks"):
        interop.doc_blocks(block + "\n" + block)


@pytest.mark.parametrize("router", ROUTERS)
def test_router_section_has_every_subsection(text, router):
    body = sections(text).get(router)
    assert body is not None, f"no '## {router}' section"
    found = subsections(body)
    missing = [name for name in SUBSECTIONS if name not in found]
    assert not missing, f"{router}: missing subsections {missing}"
    assert found[: len(SUBSECTIONS)] == list(SUBSECTIONS), f"{router}: order {found}"
    for name in SUBSECTIONS:  # each subsection says something
        part = body.split(f"### {name}", 1)[1].split("\n### ", 1)[0]
        assert len(part.strip()) > 20, (router, name)


def test_provider_section_asks_for_every_point(text):
    body = sections(text).get(PROVIDER)
    assert body is not None
    assert subsections(body) == list(SUBSECTIONS)


@pytest.mark.parametrize("router", ROUTERS[2:])
def test_untested_vendors_say_so_and_give_a_config(text, router):
    body = sections(text)[router]
    assert "**Untested**" in body, router
    assert re.search(r"^```\n.+?^```", body, re.S | re.M), f"{router}: no configuration block"


def test_the_check_fails_when_a_subsection_is_lost(text):
    body = sections(text)["Junos"].replace("### BFD", "### Liveness")
    assert "BFD" not in subsections(body)


def test_sysctl_block_parses(text):
    settings = interop.sysctl_settings(interop.doc_blocks(text)["sysctl"])
    assert settings["net.ipv4.fib_multipath_hash_policy"] == "1"
    assert settings["net.ipv6.fib_multipath_hash_policy"] == "1"
    assert settings["net.ipv4.ip_forward"] == "1"


def document_problems(body: str) -> list[str]:
    """What is missing from a section's `### Checked against` list: the subsection, a document
    address, or the line naming what no document was found for."""
    if "Checked against" not in subsections(body):
        return ["no '### Checked against' subsection"]
    checked = body.split("### Checked against", 1)[1].split("\n### ", 1)[0]
    problems = []
    if not re.search(r"https?://\S+", checked):
        problems.append("no document address")
    if "Not verified against a vendor document" not in checked:
        problems.append("no 'Not verified against a vendor document' line")
    return problems


@pytest.mark.parametrize("router", ROUTERS[2:])
def test_untested_vendors_name_their_documents(text, router):
    """An untested section says which vendor documents it was checked against (with an
    address), and what it could not check, so a reader knows what to verify first."""
    assert document_problems(sections(text)[router]) == [], router


def test_the_document_check_fails_without_addresses(text):
    body = re.sub(r"https?://\S+", "", sections(text)["Junos"])
    assert document_problems(body) == ["no document address"]
    assert document_problems(body.replace("### Checked against", "### Sources")) != []
