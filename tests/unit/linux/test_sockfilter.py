"""The classic BPF programs of bgplb.linux.sockfilter, run on a tiny interpreter of the few
instructions they use (the kernel's semantics: BPF_ABS loads are big-endian)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from bgplb.linux import sockfilter as sf


def run(program: list[sf.Instruction], packet: bytes) -> int:
    a, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        if code == sf.BPF_LD_W_ABS:
            a = int.from_bytes(packet[k : k + 4], "big")
        elif code == sf.BPF_LD_H_ABS:
            a = int.from_bytes(packet[k : k + 2], "big")
        elif code == sf.BPF_JEQ_K:
            pc += jt if a == k else jf
        elif code == sf.BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        pc += 1


def nlmsg(pid: int) -> bytes:
    return struct.pack("=IHHII", 36, 24, 0, 7, pid) + bytes(16)


@given(st.sets(st.integers(1, 2**32 - 1), max_size=4), st.integers(0, 2**32 - 1))
def test_drops_exactly_the_listed_pids(pids: set[int], pid: int) -> None:
    program = sf.drop_netlink_pids(pids)
    assert len(sf.encode(program)) == 8 * len(program)
    verdict = run(program, nlmsg(pid))
    assert verdict == (0 if pid in pids else sf.KEEP)
    for listed in pids:
        assert run(program, nlmsg(listed)) == 0
