"""Per-sample status codes and the counter names reported by the pipeline.

Every record of the input stream gets exactly one status. Non-OK records are
skipped (never decoded further, never shifted onto another image's masks) and
counted under the corresponding name in ``Pipeline.stats()``.
"""

from __future__ import annotations

import enum

__all__ = ["Status", "COUNTER_NAMES"]


class Status(enum.IntEnum):
    OK = 0
    CORRUPT_JPEG = 1  # JPEG bytes that do not decode
    TRUNCATED_MEMBER = 2  # tar / tfrecord ends inside the record
    BAD_JSON = 3  # annotation payload is not valid SA-1B JSON / TFDS Example
    RLE_SIZE_MISMATCH = 4  # an RLE or the image record disagrees with the JPEG size
    NO_USABLE_MASK = 5  # no mask left after dropping empty and >90 % masks
    BAD_RLE = 6  # an RLE string that does not decode to h*w pixels
    UNPAIRED_MEMBER = 7  # a .jpg without its .json (or vice versa)
    PADDING = -1  # no record: fills the last batch of a finite stream (not counted)

    @property
    def counter(self) -> str:
        return self.name.lower()


COUNTER_NAMES: tuple[str, ...] = tuple(s.counter for s in Status if s >= 0)
