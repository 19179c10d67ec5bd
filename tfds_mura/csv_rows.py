"""Reading a CSV file's rows with one-line errors, shared by the builders that take CSVs
(`mura`'s image and study lists, `image_folder`'s manifest)."""

import csv
import io
from collections.abc import Iterator


def csv_rows(data: bytes, name: str, error: type[Exception]) -> Iterator[tuple[int, list[str]]]:
    """Yields (line number, fields) for each non-blank row of the CSV `data` (UTF-8, a BOM
    allowed). Text that is not UTF-8, or not valid CSV, raises `error` with one line naming
    `name` (and the line)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{name}: not UTF-8 text ({e.reason})") from e
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for fields in reader:
            if fields and any(field.strip() for field in fields):
                yield reader.line_num, fields
    except csv.Error as e:
        raise error(f"{name}:{reader.line_num}: malformed CSV ({e})") from e
