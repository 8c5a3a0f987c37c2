"""Classic BPF socket filters (SO_ATTACH_FILTER): drop in the kernel what a socket's reader
would only throw away, without a system call per message.

A program is a list of ``(code, jt, jf, k)`` instructions (``struct sock_filter``); the kernel
copies it at attach time. Loads with ``BPF_ABS`` read the packet — for netlink sockets, the
message starting with its ``nlmsghdr`` — in network byte order.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
from collections.abc import Iterable, Sequence

SO_ATTACH_FILTER = 26

BPF_LD_W_ABS = 0x20  # A = be32 at offset k
BPF_LD_H_ABS = 0x28  # A = be16 at offset k
BPF_JEQ_K = 0x15  # if A == k: skip jt, else skip jf
BPF_RET_K = 0x06  # return k: bytes of the packet to keep (0: drop it)

KEEP = 0xFFFFFFFF

Instruction = tuple[int, int, int, int]

_NLMSG_PID = 12  # offset of nlmsg_pid in struct nlmsghdr


def encode(program: Sequence[Instruction]) -> bytes:
    return b"".join(struct.pack("HBBI", *ins) for ins in program)


def attach_filter(sock: socket.socket, count: int, code: bytes) -> None:
    """SO_ATTACH_FILTER with `count` encoded instructions (the kernel copies them)."""
    program = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", count, ctypes.addressof(program))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def attach(sock: socket.socket, program: Sequence[Instruction]) -> None:
    attach_filter(sock, len(program), encode(program))


def _as_loaded(value: int) -> int:
    """A host-order 32-bit field as a BPF_W|BPF_ABS load sees it (big-endian)."""
    return int.from_bytes(value.to_bytes(4, sys.byteorder), "big")


def drop_netlink_pids(pids: Iterable[int]) -> list[Instruction]:
    """Drop netlink messages whose nlmsg_pid is one of `pids`; keep every other message.

    Notifications caused by a request carry the requesting socket's port id there, so this
    drops the echo of one's own changes (one notification per datagram)."""
    wanted = sorted(set(pids))
    program: list[Instruction] = [(BPF_LD_W_ABS, 0, 0, _NLMSG_PID)]
    for i, pid in enumerate(wanted):
        # equal: jump over the remaining comparisons and the KEEP, to the drop
        program.append((BPF_JEQ_K, len(wanted) - i, 0, _as_loaded(pid)))
    program += [(BPF_RET_K, 0, 0, KEEP), (BPF_RET_K, 0, 0, 0)]
    return program
