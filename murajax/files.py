"""Files published whole: a reader sees the old file, or the new one, never half of one."""

import contextlib
import os
import tempfile
from collections.abc import Iterator

PART_SUFFIX = ".part"


def part_prefix(path: str) -> str:
    """The name prefix of `replacing(path)`'s temporary files: `.<file name>.`."""
    return f".{os.path.basename(path)}."


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yields the path of a new, empty temporary file beside `path`
    (`.<file name>.<random>.part`). When the block ends normally that file becomes `path`
    (readable by everyone, renamed with `os.replace`, which is atomic); when it raises, the
    temporary file is removed and `path` is as it was. Creating it raises `OSError` (e.g. an
    unwritable folder) before the block runs."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, part = tempfile.mkstemp(dir=folder, prefix=part_prefix(path), suffix=PART_SUFFIX)
    os.close(fd)
    try:
        yield part
        with contextlib.suppress(OSError):  # mkstemp's 0600 would hide it from other users
            os.chmod(part, 0o644)
        os.replace(part, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)
