"""The benchmark chain ``A <- B <- C <- D``, built with qemu-img and qemu-io; used by tests and bench.

    python -m bench.make_chain SIZE DIR

All layers are qcow2 v3 (``compat=1.1``), 64 KiB clusters, the same virtual SIZE
(a multiple of 64 MiB, qemu-img's spelling: ``256M``, ``2G``), and store their
backing names relative (``A.qcow2``, ...) so a copy of DIR still works.  The
layout is a pure function of SIZE (no randomness), so a rebuild is byte-identical:

    A  0xa1: 1 MiB at every even MiB                                  (50 %)
    B  0xb2: 1 MiB at k*5M + 512K; zeroes 256K at k*16M + 10M + 128K
    C  0xc3: in MiB j (j%3 != 2) 64K*(1 + j%4) at j*1M + ((5j)%12)*64K;
             zeroes 128K at k*32M + 20M + 768K
    D  0xd4: 192K at q*4M + 3M + 256K, and 4K at q*4M + 1M + 4K when q%8 == 0
             (a partial-cluster write: copy-on-write from A into D);
             zeroes 1M at k*64M + 40M
    everything else is unallocated in every layer (reads as zeros)

Each layer's writes go through one qemu-io process, in the order above.
"""
import os
import subprocess
import sys

K = 1024
M = 1024 * K
LAYERS = ("A", "B", "C", "D")
CREATE_OPTIONS = "cluster_size=65536,compat=1.1"
_UNITS = {"K": K, "M": M, "G": 1024 * M, "T": 1024 * 1024 * M}


def parse_size(text):
    """Bytes for a size such as ``256M`` or ``2G`` (IEC units; one trailing ``B`` is allowed)."""
    text = text[:-1] if text.endswith("B") else text
    number, unit = (text[:-1], _UNITS[text[-1]]) if text[-1:] in _UNITS else (text, 1)
    if not (number.isascii() and number.isdigit()):
        raise ValueError("invalid size %r" % text)
    return int(number) * unit


def _pattern(byte, offset, length):
    return "write -P 0x%x %d %d" % (byte, offset, length)


def _zeroes(offset, length):
    return "write -z %d %d" % (offset, length)


def layer_writes(layer, size):
    """The qemu-io commands that fill one layer, in order."""
    mib = size // M
    if layer == "A":
        return [_pattern(0xa1, i * 2 * M, M) for i in range(mib // 2)]
    if layer == "B":
        return ([_pattern(0xb2, k * 5 * M + 512 * K, M) for k in range(mib // 5)]
                + [_zeroes(k * 16 * M + 10 * M + 128 * K, 256 * K) for k in range(mib // 16)])
    if layer == "C":
        return ([_pattern(0xc3, j * M + ((5 * j) % 12) * 64 * K, 64 * K * (1 + j % 4))
                 for j in range(mib) if j % 3 != 2]
                + [_zeroes(k * 32 * M + 20 * M + 768 * K, 128 * K) for k in range(mib // 32)])
    writes = []
    for q in range(mib // 4):
        writes.append(_pattern(0xd4, q * 4 * M + 3 * M + 256 * K, 192 * K))
        if q % 8 == 0:
            writes.append(_pattern(0xd4, q * 4 * M + M + 4 * K, 4 * K))
    return writes + [_zeroes(k * 64 * M + 40 * M, M) for k in range(mib // 64)]


def _run(argv, directory):
    subprocess.run(argv, cwd=directory, check=True, stdout=subprocess.DEVNULL)


def build_chain(size, directory):
    """Build A.qcow2 <- B.qcow2 <- C.qcow2 <- D.qcow2 of ``size`` (bytes or a size string) in directory."""
    size = parse_size(size) if isinstance(size, str) else size
    if size <= 0 or size % (64 * M):
        raise ValueError("SIZE must be a positive multiple of 64M (got %d bytes)" % size)
    os.makedirs(directory, exist_ok=True)
    for layer in LAYERS:
        path = os.path.join(directory, layer + ".qcow2")
        if os.path.exists(path):
            os.unlink(path)
    below = None
    for layer in LAYERS:
        # Relative backing names, resolved next to the image: the directory can be copied.
        backing = ["-b", below + ".qcow2", "-F", "qcow2"] if below else []
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", CREATE_OPTIONS]
             + backing + [layer + ".qcow2", str(size)], directory)
        below = layer
    for layer in LAYERS:
        argv = ["qemu-io", "-f", "qcow2", layer + ".qcow2"]
        for command in layer_writes(layer, size):
            argv += ["-c", command]
        _run(argv, directory)
    return directory


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: python -m bench.make_chain SIZE DIR\n")
        return 2
    try:
        build_chain(argv[0], argv[1])
    except ValueError as err:
        sys.stderr.write("%s\n" % err)
        return 2
    print("chain built in %s (virtual size %d bytes)" % (argv[1], parse_size(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
