"""The bounded decompressor and the magic table, under their old name; they live in
:mod:`vmboot.compression`."""

from vmboot.compression.decompress import CHUNK, ZSTD_INPUT_STEP, decompress
from vmboot.compression.formats import FORMATS, MAGICS, Format, detect_format

__all__ = ["CHUNK", "FORMATS", "MAGICS", "ZSTD_INPUT_STEP", "Format", "decompress", "detect_format"]
