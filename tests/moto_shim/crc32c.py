"""CRC32C for moto, which imports a `crc32c` module when it computes a CRC32C checksum
(UploadPartCopy, CompleteMultipartUpload) and, without one, answers a CRC32 named
CRC32C. The test rig puts this directory first on moto's PYTHONPATH. It uses awscrt's
CRC32C when present, else a table-driven one in Python (slow, but right)."""

try:
    from awscrt.checksums import crc32c as _crt_crc32c

    def crc32c(data, value=0):
        return _crt_crc32c(bytes(data), value)

except ImportError:  # pragma: no cover
    _POLY = 0x82F63B78
    _TABLE = []
    for _i in range(256):
        _c = _i
        for _ in range(8):
            _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
        _TABLE.append(_c)

    def crc32c(data, value=0):
        crc = value ^ 0xFFFFFFFF
        for b in bytes(data):
            crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF
