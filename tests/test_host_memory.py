"""keep_freed_memory: freed buffers stay in the process instead of being faulted in anew."""

import subprocess
import sys
import textwrap

import pytest

# One "program": 64 buffers of 1 MiB, written, then all freed (as XLA:CPU frees a step's).
_SCRIPT = textwrap.dedent(
    """
    import ctypes, resource, sys
    from sam_jax.host_memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    def program():
        ptrs = [libc.malloc(1 << 20) for _ in range(64)]
        for p in ptrs:
            ctypes.memset(p, 1, 1 << 20)
        for p in ptrs:
            libc.free(p)
    program()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        program()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_buffers_are_reused_without_page_faults():
    faults = {
        mode: float(
            subprocess.run(
                [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
            ).stdout
        )
        for mode in ("default", "keep")
    }
    pages = 64 * (1 << 20) // 4096
    # glibc's default hands the 64 MiB back to the kernel each time: every page faults again
    assert faults["default"] > 0.5 * pages, faults
    assert faults["keep"] < 0.01 * pages, faults
