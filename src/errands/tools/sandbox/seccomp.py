"""A seccomp filter for the sandbox: system calls an ordinary command never needs, refused.

Namespaces and an unprivileged uid confine the command; what is left is the kernel itself,
and a kernel bug reachable from inside is a way out. This filter (classic BPF, handed to
bubblewrap's ``--seccomp``) shrinks that surface: the calls below fail with ``EPERM``;
every other call is allowed. A program of another architecture (32-bit code on x86-64,
x32 calls) is killed: its call numbers mean other calls.

Refused: io_uring (a rich, often-patched interface), ``bpf``, ``perf_event_open``,
``userfaultfd`` (used to widen kernel races), the key calls, ``ptrace`` and
``process_vm_*`` (no debugging inside), loading kernels and modules, every mount call,
``unshare``/``setns``, the file-handle calls (``open_by_handle_at``: a classic container
escape), ``acct``, swap, ``reboot``, ``syslog``, setting clocks, ``quotactl``,
``lookup_dcookie``, ``vhangup``, and on x86-64 ``iopl``/``ioperm``/``uselib``/``_sysctl``.
Most of these need capabilities the sandbox does not have anyway; refusing them here means
a kernel bug in their capability checks is not reachable either.
"""

from __future__ import annotations

import errno
import platform
import struct

__all__ = ["DENIED", "filter_program"]

# name: (x86-64 number, aarch64 number); None where the call does not exist
DENIED: dict[str, tuple[int | None, int | None]] = {
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "unshare": (272, 97),
    "setns": (308, 268),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "acct": (163, 89),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "syslog": (103, 116),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "quotactl": (179, 60),
    "lookup_dcookie": (212, 18),
    "vhangup": (153, 58),
    "iopl": (172, None),
    "ioperm": (173, None),
    "uselib": (134, None),
    "_sysctl": (156, None),
}

_ARCHES = {"x86_64": (0xC000003E, 0), "aarch64": (0xC00000B7, 1)}  # AUDIT_ARCH_*, column
_X32_BIT = 0x40000000

_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_ALLOW = 0x7FFF0000
_KILL_PROCESS = 0x80000000
_EPERM = 0x00050000 | errno.EPERM  # SECCOMP_RET_ERRNO | EPERM


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)  # struct sock_filter


def filter_program(machine: str | None = None) -> bytes | None:
    """The filter for *machine* (this one's by default) as bubblewrap reads it, or None
    for an architecture errands has no call numbers for."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit, column = arch
    numbers = sorted({n for pair in DENIED.values() if (n := pair[column]) is not None})
    ops = [
        _op(_LD_W_ABS, 4),  # seccomp_data.arch
        _op(_JEQ_K, audit, jt=1),
        _op(_RET_K, _KILL_PROCESS),
        _op(_LD_W_ABS, 0),  # seccomp_data.nr
    ]
    if column == 0:  # x32 calls carry a bit of their own: refuse them all
        ops += [_op(_JGE_K, _X32_BIT, jf=1), _op(_RET_K, _EPERM)]
    for number in numbers:
        ops += [_op(_JEQ_K, number, jf=1), _op(_RET_K, _EPERM)]
    ops.append(_op(_RET_K, _ALLOW))
    return b"".join(ops)
