"""Compressed data: the one table of formats and magic numbers, and everything that reads or
writes compressed kernels and initramfs archives.

- :mod:`~vmboot.compression.formats`: format names and magic numbers, :func:`detect_format`;
- :mod:`~vmboot.compression.decompress`: the bounded streaming decompressor;
- :mod:`~vmboot.compression.compress`: compressors for an initramfs (gzip, LZ4 legacy, zstd);
- :mod:`~vmboot.compression.initramfs`: sniffing and decompressing an initramfs;
- :mod:`~vmboot.compression.kernel_payload`: sniffing and decompressing a bzImage payload.
"""

from vmboot.compression.compress import compress, open_compressor
from vmboot.compression.decompress import decompress
from vmboot.compression.formats import COMPRESSIONS, FORMATS, MAGICS, Compression, Format, detect_format
from vmboot.compression.kernel_payload import PAYLOAD_LIMIT, decompress_payload

__all__ = [
    "COMPRESSIONS",
    "FORMATS",
    "MAGICS",
    "PAYLOAD_LIMIT",
    "Compression",
    "Format",
    "compress",
    "decompress",
    "decompress_payload",
    "detect_format",
    "open_compressor",
]
