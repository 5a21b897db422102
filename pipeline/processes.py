"""Child processes that end with the stage that started them."""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make the kernel SIGKILL this process when its parent ends (Linux), so that a stage
    killed with SIGKILL leaves no worker behind, still busy writing outputs nobody will
    record. With ``parent_pid``, also go at once if that parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
