"""keep_freed_memory: freed buffers stay in the process instead of being faulted in anew."""

import subprocess
import sys
import textwrap

import pytest

# One "program": buffers written, then all freed (as XLA:CPU frees a step's), in the main
# thread or in another one (XLA:CPU's executor threads allocate too).
_SCRIPT = textwrap.dedent(
    """
    import ctypes, resource, sys, threading
    from sam_jax.host_memory import keep_freed_memory
    mode, count, size, in_thread = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "thread"
    if mode != "default":
        assert keep_freed_memory(one_heap=mode == "one_heap")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    def program():
        ptrs = [libc.malloc(size) for _ in range(count)]
        for p in ptrs:
            ctypes.memset(p, 1, size)
        for p in ptrs:
            libc.free(p)
    def run(n):
        if not in_thread:
            return [program() for _ in range(n)]
        t = threading.Thread(target=lambda: [program() for _ in range(n)])
        t.start()
        t.join()
    run(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run(10)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
    """
)


def _faults(mode: str, count: int, size: int, where: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode, str(count), str(size), where],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_buffers_are_reused_without_page_faults():
    # 64 buffers of 1 MiB in the main thread
    faults = {mode: _faults(mode, 64, 1 << 20, "main") for mode in ("default", "keep")}
    pages = 64 * (1 << 20) // 4096
    # glibc's default hands the 64 MiB back to the kernel each time: every page faults again
    assert faults["default"] > 0.5 * pages, faults
    assert faults["keep"] < 0.01 * pages, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_one_heap_keeps_large_blocks_of_other_threads():
    # 2 buffers of 48 MiB (over glibc's highest mmap threshold, 32 MiB) in another thread
    faults = {mode: _faults(mode, 2, 48 << 20, "thread") for mode in ("keep", "one_heap")}
    pages = 2 * (48 << 20) // 4096
    assert faults["keep"] > 0.5 * pages, faults  # mapped and unmapped each time
    assert faults["one_heap"] < 0.01 * pages, faults
