"""tar -> zstd -> [gpg] -> file, hashing while streaming; and the way back.

Four jobs, one module each: ``artifact`` (the compressed artifact writer), ``tar_writer``
(entries -> tar stream), ``reader`` (the decompressing reader) and ``tar_reader`` (the tar parser).
"""

from erp_backup.adapters.archive.artifact import (
    CHUNK,
    ArtifactWriter,
    Encryptor,
    WrittenArtifact,
    file_digest,
    file_stamp,
)
from erp_backup.adapters.archive.reader import DecompressingReader, iter_decompressed, open_decompressed
from erp_backup.adapters.archive.tar_reader import TarMember, TarStream
from erp_backup.adapters.archive.tar_writer import TarResult, write_tar

__all__ = [
    "CHUNK",
    "ArtifactWriter",
    "DecompressingReader",
    "Encryptor",
    "TarMember",
    "TarResult",
    "TarStream",
    "WrittenArtifact",
    "file_digest",
    "file_stamp",
    "iter_decompressed",
    "open_decompressed",
    "write_tar",
]
