"""Programs of one launch that hand work to each other through int32 counters (the Triton side of
``csrc/tickets.cuh``).

A launch's counters (from :func:`._host.ticket_counters`, zero on entry) are: [0] the next ticket, [1] the
programs finished, then counts of finished work items that later items wait for. Every program takes a
ticket (:func:`claim`) and does the work the ticket names, in ticket order; a program may wait
(:func:`wait_count`) only for work of smaller tickets, which programs that already run hold and finish
without waiting on larger ones: the wait ends on any GPU, whatever its occupancy. The interpreter runs
programs one by one in ticket order, so there the count must already be reached: an error instead of a
hang (:func:`wait_count`). The launch's last program zeroes the counters again (:func:`finish`).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def claim(counters_ptr):
    """This program's ticket."""
    return tl.atomic_add(counters_ptr, 1)


@triton.jit
def add_count(count_ptr):
    """One more finished work item at ``count_ptr``, after all this program's threads' stores."""
    tl.debug_barrier()
    tl.atomic_add(count_ptr, 1, sem="release")


@triton.jit
def wait_count(counters_ptr, index, target, INTERPRETED: tl.constexpr):
    """Returns once ``target`` work items are counted at ``counters[index]``; their stores are then visible
    to loads that bypass L1 (``cache_modifier=".cg"``). In the interpreter, which runs the kernel as
    Python, a count not yet reached never will be: it raises (the branch is not compiled for a GPU)."""
    if INTERPRETED:
        if tl.atomic_add(counters_ptr + index, 0) < target:
            raise RuntimeError("a program waits on work of a later ticket")
    else:
        while tl.atomic_add(counters_ptr + index, 0, sem="acquire") < target:
            pass


@triton.jit
def is_last(count_ptr, total):
    """True in the one program whose arrival at ``count_ptr`` is the ``total``-th; every other program's
    stores, made before its arrival, are visible to that program after it (barrier, then acq_rel)."""
    tl.debug_barrier()
    return tl.atomic_add(count_ptr, 1, sem="acq_rel") == total - 1


@triton.jit
def finish(counters_ptr, TOTAL, COUNTERS):
    """The last of the launch's TOTAL programs to get here zeroes the COUNTERS counters for the next launch."""
    if is_last(counters_ptr + 1, TOTAL):
        for c in range(0, COUNTERS):
            tl.store(counters_ptr + c, 0)
