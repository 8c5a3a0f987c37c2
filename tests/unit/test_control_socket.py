import asyncio
import logging
import os
import socket
import stat
import threading

import pytest

from bgplb.control.socket import MAX_REQUEST, ControlError, ControlServer, request


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


class _Running:
    """A ControlServer with a `status` command on its own loop thread."""

    def __init__(self, path):
        self.path = path
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    async def _main(self):
        server = ControlServer(self.path)

        async def status(req):
            return {"peers": 2}

        server.register("status", status)
        try:
            await server.start()
        except ControlError as exc:
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        while not self.stop.is_set():
            await asyncio.sleep(0.01)
        await server.close()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(5)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def test_start_refuses_a_regular_file_and_keeps_it(tmp_path):
    path = tmp_path / "ctl.sock"
    path.write_text("precious data\n")
    with _Running(path) as srv:
        assert isinstance(srv.error, ControlError)
        assert "is not a socket (a regular file)" in str(srv.error)
    assert path.read_text() == "precious data\n"


def test_start_refuses_a_directory_and_a_symlink(tmp_path):
    d = tmp_path / "ctl.sock"
    d.mkdir()
    with _Running(d) as srv:
        assert "a directory" in str(srv.error)
    assert d.is_dir()
    target = tmp_path / "target"
    target.write_text("x")
    link = tmp_path / "link.sock"
    link.symlink_to(target)
    with _Running(link) as srv:
        assert "a symbolic link" in str(srv.error)
    assert link.is_symlink() and target.read_text() == "x"


def test_start_removes_a_stale_socket_and_refuses_a_live_one(tmp_path):
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: stale
    with _Running(path) as first:
        assert first.error is None
        assert request(path, "status") == {"peers": 2}
        with _Running(path) as second:
            assert "another daemon is already listening" in str(second.error)
        assert request(path, "status") == {"peers": 2}  # the first one is untouched


def test_request_over_64k_gets_a_json_error_without_traceback(tmp_path, caplog):
    path = tmp_path / "ctl.sock"
    caplog.set_level(logging.DEBUG)
    with _Running(path):
        for size in (MAX_REQUEST + 10, 4 * MAX_REQUEST):
            with pytest.raises(ControlError, match=r"request too large \(over 65536 bytes\)"):
                request(path, "status", pad="x" * size)
        assert request(path, "status") == {"peers": 2}  # still serving
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert "Traceback" not in caplog.text
    assert any("over 65536 bytes refused" in r.getMessage() for r in caplog.records)
