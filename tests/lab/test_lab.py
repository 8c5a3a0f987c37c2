"""`bgplb lab up|status|exec|down` through the CLI: up, up again (idempotent), status,
exec in a node, down, down again; nothing left afterwards. Plus the built-in web server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bgplb.lab.probes import fetch
from bgplb.lab.webserver import make_server
from prerequisites import require_binary, unavailable


def bgplb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bgplb.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.mark.netns
@pytest.mark.serial  # the one lab of the host: fixed names, /run/bgplb-lab/lab.json
def test_lab_up_status_exec_down() -> None:
    from bgplb.lab.netns import can_use_netns

    reason = can_use_netns()
    if reason:
        unavailable(reason)
    require_binary("nft")
    require_binary("curl")
    if Path("/run/bgplb-lab/lab.json").exists():
        unavailable("a lab is already running here (bgplb lab down)")
    try:
        up = bgplb("lab", "up", "--web", "builtin")
        assert up.returncode == 0, up.stdout + up.stderr
        again = bgplb("lab", "up")
        assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr

        st = bgplb("lab", "status", "--json")
        assert st.returncode == 0, st.stdout + st.stderr
        status = json.loads(st.stdout)
        assert status["running"] and status["healthy"]
        assert status["route"] == ["192.0.2.10", "192.0.2.18"]
        assert [s["session"] for s in status["servers"]] == ["Established", "Established"]
        pids = [p["pid"] for p in status["processes"]]
        namespaces = [n["namespace"] for n in status["nodes"].values()]
        assert all(_alive(pid) for pid in pids)

        answers = set()
        for _ in range(12):
            ex = bgplb("lab", "exec", "client", "curl", "-s", "-m", "2", "http://198.51.100.10/")
            assert ex.returncode == 0, ex.stderr
            answers.add(ex.stdout.strip())
        assert answers <= {"Welcome to nginx 1 !", "Welcome to nginx 2 !"} and answers
        ex = bgplb("lab", "exec", "srv1", "ip", "-br", "addr", "show", "lo")
        assert "198.51.100.10/32" in ex.stdout
        bad = bgplb("lab", "exec", "nosuchnode", "true")
        assert bad.returncode == 2 and "unknown node" in bad.stderr
    finally:
        down = bgplb("lab", "down")
    assert down.returncode == 0 and "removed the lab" in down.stdout, down.stdout + down.stderr
    down2 = bgplb("lab", "down")
    assert down2.returncode == 0 and "nothing to remove" in down2.stdout
    gone = bgplb("lab", "status")
    assert gone.returncode == 1 and "no lab is running" in gone.stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in namespaces if n in netns]
    assert not [pid for pid in pids if _alive(pid)]
    assert not Path("/run/bgplb-lab/lab").exists()


def test_builtin_web_server_answers_fresh_and_keep_alive() -> None:
    server = make_server(7, 0)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    async def go() -> list[int | None]:
        for _ in range(100):
            answer = await fetch("127.0.0.1", port, timeout=1)
            if answer.server is not None:
                break
            await asyncio.sleep(0.02)
        answers = [answer.server, (await fetch("::1", port, timeout=1)).server]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):  # keep-alive: three requests on one connection
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            answers.append(7 if body == b"Welcome to nginx 7 !\n" else None)
        writer.close()
        return answers

    try:
        assert asyncio.run(go()) == [7, 7, 7, 7, 7]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
