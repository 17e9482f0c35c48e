"""The sandbox's seccomp filter: system calls an ordinary command never needs fail with
EPERM, and ordinary commands still work. Negative control: a sandbox without the filter
(``NoSeccomp``), where the same calls reach the kernel (``unshare(0)`` succeeds,
``io_uring_setup`` and ``keyctl`` get past the entry to fail on their arguments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from errands.tools.builtin.shell import make_shell_tool
from errands.tools.sandbox.bwrap import Sandbox
from errands.tools.sandbox.seccomp import filter_program
from errands.tools.tool import ToolContext

PROBE = """python3 -c '
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for name, nr, args in [("io_uring_setup", 425, (1, 0)), ("keyctl", 250, (0, 0)),
                       ("unshare", 272, (0,))]:
    ctypes.set_errno(0)
    print(name, libc.syscall(nr, *args), ctypes.get_errno())
'; git --version | cut -c1-11; echo ok > f && cat f"""


class NoSeccomp(Sandbox):
    """The control: no filter."""

    def seccomp_program(self) -> bytes | None:
        return None


@pytest.mark.parametrize("sandbox", [Sandbox, NoSeccomp], ids=["filtered", "CONTROL"])
async def test_refused_calls_fail_with_eperm(tmp_path: Path, sandbox: type[Sandbox]) -> None:
    assert filter_program() is not None, "this machine's architecture has no filter"
    tool = make_shell_tool(sandbox())
    out = (
        await tool.invoke(tool.validate({"command": PROBE}), ToolContext("e", 1, "k", tmp_path))
    ).text
    assert "git version\nok" in out, out
    lines = out.split("--- stdout ---\n", 1)[1].splitlines()[:3]
    if sandbox is NoSeccomp:  # the control: the kernel sees them
        assert lines == ["io_uring_setup -1 14", "keyctl -1 22", "unshare 0 0"], out
        return
    assert lines == ["io_uring_setup -1 1", "keyctl -1 1", "unshare -1 1"], out


def test_the_filter_exists_for_both_architectures() -> None:
    x86, arm = filter_program("x86_64"), filter_program("aarch64")
    assert x86 and arm and len(x86) % 8 == 0 and len(arm) % 8 == 0
    assert filter_program("sparc") is None
