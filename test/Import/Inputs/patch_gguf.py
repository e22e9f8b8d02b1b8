#!/usr/bin/env python3
"""Patches one field of a GGUF file in place, for tests of inconsistent models.

  patch_gguf.py FILE set-u32 KEY VALUE          change a uint32 metadata value
  patch_gguf.py FILE set-tensor-type NAME TYPE  change a tensor's GGML type id

Only fields whose size does not change are patched, so the rest of the file
stays valid.
"""
import struct
import sys


def find_name(data, name, start=0):
    """Offset just past a GGUF string (u64 length + bytes) equal to name."""
    encoded = name.encode()
    needle = struct.pack("<Q", len(encoded)) + encoded
    at = data.find(needle, start)
    if at < 0:
        sys.exit(f"patch_gguf: '{name}' not found")
    return at + len(needle)


def main():
    path, command = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if command == "set-u32":
        key, value = sys.argv[3], int(sys.argv[4])
        at = find_name(data, key)
        (value_type,) = struct.unpack_from("<I", data, at)
        if value_type != 4:
            sys.exit(f"patch_gguf: '{key}' is not a uint32 (type {value_type})")
        struct.pack_into("<I", data, at + 4, value)
    elif command == "set-tensor-type":
        name, type_id = sys.argv[3], int(sys.argv[4])
        at = find_name(data, name)
        (n_dims,) = struct.unpack_from("<I", data, at)
        struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    else:
        sys.exit(f"patch_gguf: unknown command {command}")
    with open(path, "wb") as f:
        f.write(data)


if __name__ == "__main__":
    main()
