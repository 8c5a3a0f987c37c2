"""KernelFib and the VIP addresses against the real kernel, checked with iproute2.

Topology (all in namespaces made by the test):

    client 203.0.113.2 --- 203.0.113.1 router 192.0.2.1  --- 192.0.2.2  srv1
           2001:db8:ff::2   2001:db8:ff::1      192.0.2.5  --- 192.0.2.6  srv2
                                                192.0.2.9  --- 192.0.2.10 srv3
                                                2001:db8:N::1 --- 2001:db8:N::2 (N = 1, 2, 3)

Every server holds the VIPs 198.51.100.10 and 2001:db8:100::10 on lo; the router forwards with
L4 multipath hashing (fib_multipath_hash_policy=1).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass

import pytest

from bgplb.lab.netns import Namespace
from bgplb.linux.addresses import add_vip, has_vip, remove_vip
from bgplb.linux.fib import DEFAULT_PROTOCOL, KernelFib
from bgplb.linux.nexthop import NexthopSocket

pytestmark = pytest.mark.netns

VIP4 = "198.51.100.10/32"
VIP6 = "2001:db8:100::10/128"
PROTO = DEFAULT_PROTOCOL


@dataclass
class Lab:
    router: Namespace
    client: Namespace
    servers: list[Namespace]
    gw4: list[str]  # server addresses as seen from the router
    gw6: list[str]
    ifs: list[str]  # router interfaces towards the servers


def _ip_json(ns, *args):
    out = ns.exec("ip", "-j", *args)
    return json.loads(out) if out.strip() else []


@pytest.fixture
def lab(topo):
    router = topo.add("router")
    client = topo.add("client")
    topo.link(
        client, router, ["203.0.113.2/24", "2001:db8:ff::2/64"],
        ["203.0.113.1/24", "2001:db8:ff::1/64"], "eth-rtr", "eth-cl",
    )  # fmt: skip
    client.exec("ip", "route", "add", "198.51.100.0/24", "via", "203.0.113.1")
    client.exec("ip", "-6", "route", "add", "2001:db8:100::/64", "via", "2001:db8:ff::1")
    servers, gw4, gw6, ifs = [], [], [], []
    for n in (1, 2, 3):
        srv = topo.add(f"srv{n}")
        base = 4 * (n - 1)
        topo.link(
            router, srv, [f"192.0.2.{base + 1}/30", f"2001:db8:{n}::1/64"],
            [f"192.0.2.{base + 2}/30", f"2001:db8:{n}::2/64"], f"eth-s{n}", "eth-rtr",
        )  # fmt: skip
        srv.exec("ip", "route", "add", "default", "via", f"192.0.2.{base + 1}")
        srv.exec("ip", "-6", "route", "add", "default", "via", f"2001:db8:{n}::1")
        assert add_vip(VIP4, netns=srv.name) is True
        assert add_vip(VIP6, netns=srv.name) is True
        servers.append(srv)
        gw4.append(f"192.0.2.{base + 2}")
        gw6.append(f"2001:db8:{n}::2")
        ifs.append(f"eth-s{n}")
    for key, value in (
        ("net.ipv4.ip_forward", 1),
        ("net.ipv6.conf.all.forwarding", 1),
        ("net.ipv4.fib_multipath_hash_policy", 1),
        ("net.ipv6.fib_multipath_hash_policy", 1),
    ):
        router.sysctl(key, value)
    return Lab(router, client, servers, gw4, gw6, ifs)


def desired(lab, which, weights=None):
    weights = weights or {}
    return {
        VIP4: [(lab.gw4[i], lab.ifs[i], weights.get(i, 1)) for i in which],
        VIP6: [(lab.gw6[i], lab.ifs[i], weights.get(i, 1)) for i in which],
    }


def route_group(ns, vip, v6=False):
    routes = _ip_json(ns, *(["-6"] if v6 else []), "route", "show", vip)
    if not routes:
        return None
    (route,) = routes
    assert route["protocol"] == str(PROTO)
    shown = {n["id"]: n for n in _ip_json(ns, "nexthop", "show")}
    group = shown[route["nhid"]]
    members = {shown[m["id"]]["gateway"]: m.get("weight", 1) for m in group["group"]}
    return group, members


def ours(ns):
    nhs = [n for n in _ip_json(ns, "nexthop", "show") if n.get("protocol") == str(PROTO)]
    routes = [
        r
        for fam in ("-4", "-6")
        for r in _ip_json(ns, fam, "route", "show", "table", "all")
        if r.get("protocol") == str(PROTO)
    ]
    return nhs, routes


def test_vip_addresses(lab):
    srv = lab.servers[0]
    assert has_vip(VIP4, netns=srv.name) and has_vip("2001:db8:100::10", netns=srv.name)
    assert add_vip(VIP4, netns=srv.name) is False  # already there: not ours to remove later
    addrs = _ip_json(srv, "addr", "show", "dev", "lo")[0]["addr_info"]
    v6 = [a for a in addrs if a["local"] == "2001:db8:100::10"]
    assert v6 and v6[0]["prefixlen"] == 128 and v6[0].get("nodad") is True
    assert remove_vip(VIP6, netns=srv.name) is True
    assert remove_vip(VIP6, netns=srv.name) is False
    assert not has_vip(VIP6, netns=srv.name)
    with pytest.raises(FileNotFoundError):
        has_vip(VIP4, netns="bgplb-no-such-namespace")


def test_group_follows_the_server_set(lab):
    r = lab.router
    with KernelFib(r.name, buckets=64, idle_timer=5.0, unbalanced_timer=30.0) as fib:
        fib.apply(desired(lab, [0, 1]))
        group, members = route_group(r, VIP4)
        assert members == {lab.gw4[0]: 1, lab.gw4[1]: 1}
        assert group["type"] == "resilient"
        res = group["resilient_args"]
        assert (res["buckets"], res["idle_timer"], res["unbalanced_timer"]) == (64, 5, 30)
        _, members6 = route_group(r, VIP6, v6=True)
        assert members6 == {lab.gw6[0]: 1, lab.gw6[1]: 1}
        first_id = group["id"]

        fib.apply(desired(lab, [0, 1, 2], weights={1: 2}))
        group, members = route_group(r, VIP4)
        assert group["id"] == first_id  # membership replaced in place
        assert members == {lab.gw4[0]: 1, lab.gw4[1]: 2, lab.gw4[2]: 1}
        share = fib.buckets_share(VIP4)
        assert share == {
            ipaddress.ip_address(g): n for g, n in zip(lab.gw4, (16, 32, 16), strict=True)
        }
        assert fib.apply(desired(lab, [0, 1, 2], weights={1: 2})) == []  # idempotent

        fib.apply(desired(lab, [2]))
        group, members = route_group(r, VIP4)
        assert members == {lab.gw4[2]: 1} and group["id"] == first_id
        assert route_group(r, VIP6, v6=True)[1] == {lab.gw6[2]: 1}
        assert fib.buckets_share(VIP6) == {ipaddress.ip_address(lab.gw6[2]): 64}
        # traffic really goes there
        lab.client.exec("ping", "-c", "1", "-W", "2", "198.51.100.10")
        lab.client.exec("ping", "-6", "-c", "1", "-W", "2", "2001:db8:100::10")

        fib.apply({VIP4: [], VIP6: []})
        assert route_group(r, VIP4) is None and route_group(r, VIP6, v6=True) is None
        assert ours(r) == ([], [])


def test_multipath_and_shape_change(lab):
    r = lab.router
    with KernelFib(r.name, group="multipath") as fib:
        fib.apply(desired(lab, [0, 1]))
        group, _ = route_group(r, VIP4)
        assert group.get("type", "mpath") == "mpath"
    with KernelFib(r.name, group="resilient", buckets=128) as fib:
        ops = fib.apply(desired(lab, [0, 1]))  # type change: new group, route re-pointed
        group, members = route_group(r, VIP4)
        assert group["type"] == "resilient" and group["resilient_args"]["buckets"] == 128
        assert len(members) == 2
        assert {type(op).__name__ for op in ops} == {"AddGroup", "ReplaceRoute", "DeleteGroup"}
        fib.cleanup()


def test_cleanup_and_reconcile_leave_others_alone(lab):
    r = lab.router
    # another protocol's objects: a static route to a VIP-like prefix and a nexthop object
    r.exec("ip", "route", "add", "198.51.100.99/32", "via", lab.gw4[0], "proto", "static")
    r.exec(
        "ip", "nexthop", "add", "id", "7", "via", lab.gw4[1], "dev", lab.ifs[1], "proto", "zebra"
    )
    r.exec("ip", "route", "add", "198.51.100.98/32", "nhid", "7", "proto", "zebra")

    fib = KernelFib(r.name)
    fib.apply(desired(lab, [0, 1, 2]))
    fib.close()  # simulated crash: nothing removed
    # plus debris of an older run: a nexthop and a group of ours nobody uses
    r.exec("ip", "nexthop", "add", "id", "77", "via", lab.gw4[2], "dev", lab.ifs[2], "proto",
           str(PROTO))  # fmt: skip
    r.exec("ip", "nexthop", "add", "id", "78", "group", "77", "proto", str(PROTO))
    nhs, routes = ours(r)
    assert len(routes) == 2 and len(nhs) == 3 + 3 + 2 + 2  # 3+3 gateways, 2 groups, debris

    with KernelFib(r.name) as fib:
        # adopting: the same desired state needs only the debris removed
        ops = fib.reconcile(desired(lab, [0, 1, 2]))
        assert sorted(type(op).__name__ for op in ops) == ["DeleteGroup", "DeleteNexthop"]
        assert len(ours(r)[0]) == 8
        fib.reconcile()  # fresh start: nothing of ours stays
        assert ours(r) == ([], [])
        fib.apply(desired(lab, [0]))
        fib.cleanup()
        assert ours(r) == ([], [])
    assert _ip_json(r, "route", "show", "198.51.100.99/32")[0]["protocol"] == "static"
    assert _ip_json(r, "route", "show", "198.51.100.98/32")[0]["nhid"] == 7
    assert [n["id"] for n in _ip_json(r, "nexthop", "show")] == [7]


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_watcher_reinstalls_what_others_delete(lab):
    r = lab.router
    with KernelFib(r.name, buckets=32) as fib:
        fib.start_watching()
        fib.apply(desired(lab, [0, 1]))
        stop = threading.Event()
        thread = threading.Thread(target=fib.watch, args=(stop, 0.2), daemon=True)
        thread.start()
        try:
            group, _ = route_group(r, VIP4)
            member_ids = [m["id"] for m in group["group"]]
            # someone deletes one member: the kernel shrinks the group; we put it back
            r.exec("ip", "nexthop", "del", "id", str(member_ids[0]))
            assert _wait(lambda: (route_group(r, VIP4) or (None, {}))[1].keys() == {*lab.gw4[:2]})
            # someone deletes the group: the kernel silently drops the IPv4 route with it
            gid = route_group(r, VIP4)[0]["id"]
            r.exec("ip", "nexthop", "del", "id", str(gid))
            assert _wait(lambda: route_group(r, VIP4) is not None)
            assert route_group(r, VIP4)[1] == {lab.gw4[0]: 1, lab.gw4[1]: 1}
            # someone deletes the IPv6 route
            r.exec("ip", "-6", "route", "del", "2001:db8:100::10/128")
            assert _wait(lambda: route_group(r, VIP6, v6=True) is not None)
            assert fib.reinstalls >= 3
            # our own changes do not count as interference
            before = fib.reinstalls
            fib.apply(desired(lab, [1]))
            time.sleep(0.5)
            assert fib.reinstalls == before
        finally:
            stop.set()
            thread.join(timeout=5)
        assert not thread.is_alive()
        fib.cleanup()
        assert ours(r) == ([], [])


def test_cached_state_reads_the_kernel_only_when_needed(lab):
    """While watching, an apply diffs against the state our own operations left (no dump),
    our own notifications are dropped undecoded, and anything someone else does makes the
    next step read the kernel again."""
    r = lab.router
    with KernelFib(r.name, buckets=32) as fib:
        fib.start_watching()
        fib.apply(desired(lab, [0, 1]))
        assert fib.dumps == 1
        assert fib.apply(desired(lab, [0, 1])) == []  # idempotent, from the cache
        fib.apply(desired(lab, [0, 1, 2], weights={0: 3}))
        assert route_group(r, VIP4)[1] == {lab.gw4[0]: 3, lab.gw4[1]: 1, lab.gw4[2]: 1}
        assert route_group(r, VIP6, v6=True)[1] == {lab.gw6[0]: 3, lab.gw6[1]: 1, lab.gw6[2]: 1}
        time.sleep(0.2)
        assert fib.process_events() == []  # our own changes: nothing to re-install
        assert fib.dumps == 1 and fib.reinstalls == 0

        # someone deletes our group, then we apply a change before reading the notification:
        # the replace re-creates the group, the IPv4 route went silently with the old one
        gid = route_group(r, VIP4)[0]["id"]
        r.exec("ip", "nexthop", "del", "id", str(gid))
        fib.apply(desired(lab, [0, 1]))
        assert route_group(r, VIP4) is None  # the cache did not know
        assert _wait(lambda: fib.process_events() is not None and route_group(r, VIP4))
        assert route_group(r, VIP4)[1] == {lab.gw4[0]: 1, lab.gw4[1]: 1}
        assert fib.reinstalls == 1 and fib.dumps == 2

        # a foreign nexthop takes the id our next object would get: the add fails, we read
        # the kernel again and take another id
        before = {n["id"] for n in ours(r)[0]}
        fib.apply(desired(lab, [0]))
        freed = sorted(before - {n["id"] for n in ours(r)[0]})
        assert freed
        r.exec("ip", "nexthop", "add", "id", str(freed[0]), "via", lab.gw4[1], "dev",
               lab.ifs[1], "proto", "zebra")  # fmt: skip
        time.sleep(0.1)
        assert fib.process_events() == []  # not ours
        fib.apply(desired(lab, [0, 1, 2]))
        assert fib.dumps == 3
        assert route_group(r, VIP4)[1] == {lab.gw4[0]: 1, lab.gw4[1]: 1, lab.gw4[2]: 1}
        assert freed[0] not in {n["id"] for n in ours(r)[0]}
        fib.cleanup()
        assert ours(r) == ([], [])
    assert [n["id"] for n in _ip_json(r, "nexthop", "show")] == [freed[0]]


def test_without_watcher_every_apply_reads_the_kernel(lab):
    r = lab.router
    with KernelFib(r.name, buckets=32) as fib:
        fib.apply(desired(lab, [0, 1]))
        r.exec("ip", "-6", "route", "del", "2001:db8:100::10/128")
        fib.apply(desired(lab, [0, 1]))  # nothing watches: the apply itself must see it
        assert route_group(r, VIP6, v6=True)[1] == {lab.gw6[0]: 1, lab.gw6[1]: 1}
        assert fib.dumps == 2
        fib.cleanup()


def test_bucket_shares_in_one_read_and_from_another_thread(lab):
    r = lab.router
    vips = [f"198.51.100.{i}/32" for i in range(20, 40)]

    def state(which):
        return {v: [(lab.gw4[i], lab.ifs[i], 1) for i in which] for v in vips}

    with KernelFib(r.name, buckets=64, idle_timer=1, unbalanced_timer=0) as fib:
        fib.start_watching()
        fib.apply(state([0, 1]))
        got = fib.buckets_shares()
        assert fib.dumps == 2  # the first apply, then one for every VIP's share
        assert sorted(map(str, got.shares)) == sorted(vips) and got.omitted == ()
        for share in got.shares.values():
            assert set(map(str, share)) == {lab.gw4[0], lab.gw4[1]}
            assert sum(share.values()) == 64
        # the 20 VIPs share one group: it is read once; a limit below its buckets omits them
        assert len(fib.buckets_shares(limit=64).shares) == 20
        limited = fib.buckets_shares(limit=63)
        assert len(limited.shares) == 0 and len(limited.omitted) == 20
        assert fib.buckets_share(vips[0]) == got.shares[ipaddress.ip_network(vips[0])]

        # reads in this thread while another applies: separate sockets, no mixed-up replies
        errors: list[BaseException] = []

        def flap():
            try:
                for n in range(30):
                    fib.apply(state([0, 1, 2] if n % 2 == 0 else [0, 1]))
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=flap, daemon=True)
        thread.start()
        reads = 0
        while thread.is_alive() and reads < 200:
            for share in fib.buckets_shares().shares.values():
                # a nexthop created after the dump is not counted: a snapshot, not exact
                assert 0 < sum(share.values()) <= 64
                assert set(map(str, share)) <= set(lab.gw4)
            reads += 1
        thread.join(timeout=30)
        assert not thread.is_alive() and not errors, errors
        assert reads > 0
        fib.cleanup()
        assert ours(r) == ([], [])


ECHO_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    name = sys.argv[1].encode()
    async def handle(reader, writer):
        try:
            while data := await reader.read(64):
                writer.write(name * len(data))
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()
    async def main():
        server = await asyncio.start_server(handle, host=None, port=8080)
        print("LISTENING", flush=True)
        await asyncio.sleep(120)  # bounded lifetime; the test kills it earlier
    asyncio.run(main())
    """
)

# N connections, one byte each 100 ms, each must be answered within 1 s. Prints READY (with the
# server of every connection) once all are up, then runs `hold` more seconds and prints, per
# connection, its server and whether it broke. Bounded: at most `hold` + 10 s.
CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    vip, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    async def conn(i, ready, result):
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, 8080), 3)
            writer.write(b"x")
            result[i] = {"server": (await asyncio.wait_for(reader.read(1), 2)).decode()}
        except (OSError, asyncio.TimeoutError) as exc:
            result[i] = {"server": None, "broken": repr(exc)}
            ready.release()
            return
        ready.release()
        loop = asyncio.get_running_loop()
        await started.wait()
        end = loop.time() + hold
        try:
            while loop.time() < end:
                writer.write(b"x")
                got = await asyncio.wait_for(reader.read(1), 1)
                if got.decode() != result[i]["server"]:
                    raise ConnectionError(f"answered by {got!r}")
                await asyncio.sleep(0.1)
        except (OSError, asyncio.TimeoutError) as exc:
            result[i]["broken"] = repr(exc)
        writer.close()
    async def main():
        global started
        started = asyncio.Event()
        ready, result = asyncio.Semaphore(0), {}
        tasks = [asyncio.create_task(conn(i, ready, result)) for i in range(n)]
        for _ in range(n):
            await ready.acquire()
        print("READY " + json.dumps(result), flush=True)
        started.set()
        await asyncio.wait_for(asyncio.gather(*tasks), hold + 10)
        print("RESULT " + json.dumps(result), flush=True)
    asyncio.run(main())
    """
)


def _one_server_leaves(lab, vip, **fib_args):
    """60 active connections over 3 servers; srv3 leaves the group. Returns, per connection,
    its server letter and whether it broke."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n, srv in enumerate(lab.servers):
            p = srv.popen(sys.executable, "-c", ECHO_SERVER, "ABC"[n], stdout=subprocess.PIPE)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == b"LISTENING"
        with KernelFib(lab.router.name, **fib_args) as fib:
            fib.apply(desired(lab, [0, 1, 2]))
            client = lab.client.popen(
                sys.executable, "-c", CLIENT, vip, "60", "3", stdout=subprocess.PIPE
            )
            procs.append(client)
            assert client.stdout is not None
            line = client.stdout.readline().decode()
            assert line.startswith("READY "), line
            before = json.loads(line[6:])
            servers = {c["server"] for c in before.values()}
            assert servers == {"A", "B", "C"}, f"L4 hashing did not spread: {servers}"
            fib.apply(desired(lab, [0, 1]))  # srv3 ("C") leaves
            line = client.stdout.readline().decode()
            assert line.startswith("RESULT "), line
            client.wait(timeout=15)
            fib.cleanup()
            return list(json.loads(line[7:]).values())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
            if p.stdout is not None:
                p.stdout.close()


@pytest.mark.serial  # 60 connections, each bounded by 1-3 s under traffic
@pytest.mark.parametrize("vip", ["198.51.100.10", "2001:db8:100::10"])
def test_resilient_group_keeps_other_servers_connections(lab, vip):
    after = _one_server_leaves(lab, vip, buckets=512, idle_timer=10, unbalanced_timer=60)
    kept = [c for c in after if c["server"] in ("A", "B")]
    broken = [c for c in kept if "broken" in c]
    assert kept and not broken, f"{len(broken)} of {len(kept)} connections broke: {broken[:3]}"
    # those of the server that left did move (to a server that resets them)
    moved = [c for c in after if c["server"] == "C"]
    assert moved and all("broken" in c for c in moved)


@pytest.mark.serial  # 60 connections, each bounded by 1-3 s under traffic
def test_multipath_group_breaks_other_servers_connections(lab):
    """The contrast (and proof the check above can fail): hash-threshold ECMP re-spreads
    flows of the servers that stay when the set changes."""
    after = _one_server_leaves(lab, "198.51.100.10", group="multipath")
    kept = [c for c in after if c["server"] in ("A", "B")]
    assert any("broken" in c for c in kept)


# --- the in-memory double against the kernel ----------------------------------------------------
def _ifindex(ns, name):
    return _ip_json(ns, "link", "show", name)[0]["ifindex"]


def _scenario(fib, lab, idx):
    """Incremental updates through the cases MemoryFib models; returns what each step did."""
    vips = [f"198.51.100.{i}/32" for i in range(40, 50)]

    def paths(*which):
        return [(lab.gw4[i], idx[i], 64) for i in which]

    steps = [
        {v: paths(0, 1, 2) for v in vips},  # one shared group
        {v: paths(0, 1) for v in vips},  # srv3 leaves every VIP: one replace
        {v: paths(0, 1, 2) for v in vips[:3]},  # 3 diverge: they move
        {v: paths(1) for v in vips[:7]},  # the majority changes: replace, 3 unchanged move
        {"198.51.100.99/32": paths(0), vips[9]: []},  # a foreign route at .99; a withdrawal
        {v: [] for v in vips[:5]},
    ]
    record = []
    for n, changes in enumerate(steps):
        result = fib.update(changes, now=float(n))
        failed = sorted((str(net), e.errno, e.attempts) for net, e in result.failed.items())
        record.append(([type(op).__name__ for op in result.ops], failed))
    for n in range(3):  # the refused VIP's retries leave nothing behind
        record.append((["retry"], [len(fib.retry_due(now=100.0 * (n + 1)).failed)]))
    return record, fib.installed()


def test_memory_fib_behaves_like_the_kernel(lab):
    """The same incremental scenario on KernelFib (this namespace) and MemoryFib: the same
    operations, the same refusals (errno), the same installed objects and ids at the end."""
    from bgplb.linux.memfib import MemoryFib, MemoryKernel

    r = lab.router
    idx = [_ifindex(r, name) for name in lab.ifs]
    r.exec("ip", "route", "add", "198.51.100.99/32", "via", lab.gw4[0], "proto", "static")
    mem_kernel = MemoryKernel()
    mem_kernel.add_route(ipaddress.ip_network("198.51.100.99/32"), None, protocol=4)
    with KernelFib(r.name, buckets=64) as fib:
        fib.start_watching()
        got_kernel = _scenario(fib, lab, idx)
        counts = ours(r)
        fib.cleanup()
        assert ours(r) == ([], [])
    got_mem = _scenario(MemoryFib(mem_kernel, buckets=64), lab, idx)
    assert got_kernel[0] == got_mem[0]
    assert got_kernel[1] == got_mem[1]
    state = got_kernel[1]
    assert set(state.groups) == set(state.routes.values())  # no orphans in the kernel
    assert len(counts[1]) == len(state.routes) == 4 and len(counts[0]) == 2 + 2  # 2 nh, 2 groups
    assert _ip_json(r, "route", "show", "198.51.100.99/32")[0]["protocol"] == "static"


def test_in_place_replace_keeps_the_buckets_of_servers_that_stay(lab):
    r = lab.router
    vips = [f"198.51.100.{i}/32" for i in range(60, 70)]
    with KernelFib(r.name, buckets=64, idle_timer=1000, unbalanced_timer=0) as fib:
        fib.update({v: [(lab.gw4[i], lab.ifs[i], 1) for i in (0, 1, 2)] for v in vips})
        (gid,) = set(fib.installed().routes.values())
        with NexthopSocket(r.name) as sock:
            before = {b.index: b.nh_id for b in sock.dump_buckets(gid)}
            result = fib.update({v: [(lab.gw4[i], lab.ifs[i], 1) for i in (0, 1)] for v in vips})
            after = {b.index: b.nh_id for b in sock.dump_buckets(gid)}
        assert [type(op).__name__ for op in result.ops] == ["ReplaceGroup", "DeleteNexthop"]
        gone = result.ops[-1].id
        assert set(fib.installed().routes.values()) == {gid}
        moved = [i for i in before if before[i] != gone and after[i] != before[i]]
        assert moved == [] and gone not in after.values()
        fib.cleanup()


def test_a_rejected_next_hop_fails_only_its_vips_without_leaks(lab):
    r = lab.router
    ok, bad = "198.51.100.70/32", "198.51.100.71/32"
    with KernelFib(r.name, buckets=32) as fib:
        fib.start_watching()
        result = fib.update(
            {ok: [(lab.gw4[0], lab.ifs[0], 1)], bad: [(lab.gw4[1], 9999, 1)]}  # no such oif
        )
        assert set(result.failed) == {ipaddress.ip_network(bad)}
        assert result.failed[ipaddress.ip_network(bad)].errno == errno.EINVAL  # no such device
        assert route_group(r, ok)[1] == {lab.gw4[0]: 1}
        before = ours(r)
        for n in range(1, 4):
            fib.retry_due(now=time.monotonic() + 100 * n)
            assert ours(r) == before
        assert fib.failures()[ipaddress.ip_network(bad)].attempts == 4
        fib.cleanup()


def test_adoption_defers_deletions_until_finished(lab):
    r = lab.router
    with KernelFib(r.name, buckets=32) as fib:
        fib.apply(desired(lab, [0, 1, 2]))
    before = ours(r)
    with KernelFib(r.name, buckets=32) as fib:
        fib.start_watching()
        adopted = fib.adopt()
        assert adopted.vips == 2 and fib.deferring
        fib.update({VIP4: [(lab.gw4[0], lab.ifs[0], 1)], VIP6: []})  # only partly re-learned
        assert ours(r) == before
        fib.finish_deferral()
        assert route_group(r, VIP4)[1] == {lab.gw4[0]: 1}
        assert route_group(r, VIP6, v6=True) is None
        fib.cleanup()
        assert ours(r) == ([], [])


def test_cleanup_checks_the_kernel_when_the_model_missed_something(lab, monkeypatch):
    """The exit clean-up works from the watched model (no 100k-route dump), then checks that no
    nexthop object of ours is left; if one is, it reads the kernel and removes it all."""
    r = lab.router
    with KernelFib(r.name, buckets=32) as fib:
        fib.start_watching()
        fib.apply(desired(lab, [0, 1]))
        # an object of ours the model does not know, and the watcher "saw" nothing
        r.exec("ip", "nexthop", "add", "id", "77", "via", lab.gw4[2], "dev", lab.ifs[2],
               "proto", str(PROTO))  # fmt: skip
        r.exec("ip", "nexthop", "add", "id", "78", "group", "77", "proto", str(PROTO))
        r.exec("ip", "route", "add", "198.51.100.77/32", "nhid", "78", "proto", str(PROTO))
        monkeypatch.setattr(fib, "poll_events", lambda: False)
        fib.cleanup()
        assert ours(r) == ([], [])


def test_bucket_shares_of_some_vips_read_only_their_routes(lab, monkeypatch):
    """`bgplb status` shows a page of VIPs: their shares come from one lookup per VIP, not from
    a dump of every route (100k routes: seconds)."""
    r = lab.router
    with KernelFib(r.name, buckets=32) as fib:
        fib.apply(desired(lab, [0, 1]))
        everything = fib.buckets_shares()
        monkeypatch.setattr(
            fib._reader, "dump_routes", lambda **_: pytest.fail("dumped every route")
        )
        some = fib.buckets_shares([VIP4])
        assert some.shares == {ipaddress.ip_network(VIP4): everything.shares[
            ipaddress.ip_network(VIP4)]}  # fmt: skip
        assert sum(some.shares[ipaddress.ip_network(VIP4)].values()) == 32
        assert fib.buckets_shares(["198.51.100.99/32"]).shares == {}  # not ours: absent
        monkeypatch.undo()
        fib.cleanup()
