import asyncio
import os
import stat
import threading

import pytest

from bgplb.control.socket import ControlError, ControlServer, request


def test_round_trip_errors_and_permissions(tmp_path):
    path = tmp_path / "ctl.sock"
    ready = threading.Event()
    stop = threading.Event()

    async def main():
        server = ControlServer(path)

        async def status(req):
            return {"peers": 2}

        async def drain(req):
            if req.get("service") != "web":
                raise ControlError(f"no service {req.get('service')!r}")
            return "draining"

        server.register("status", status)
        server.register("drain", drain)
        await server.start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.01)
        await server.close()

    t = threading.Thread(target=lambda: asyncio.run(main()))
    t.start()
    try:
        assert ready.wait(5)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert request(path, "status") == {"peers": 2}
        assert request(path, "drain", service="web") == "draining"
        with pytest.raises(ControlError, match="no service 'db'"):
            request(path, "drain", service="db")
        with pytest.raises(ControlError, match="unknown command"):
            request(path, "explode")
    finally:
        stop.set()
        t.join(5)
    assert not path.exists()
    with pytest.raises(ControlError, match="is the daemon running"):
        request(path, "status")
