"""The qemu-io subset: exact output lines, checked against the real qemu-io as the oracle."""
import subprocess

import pytest

from commands.qemu_io import cvtstr, run_qemu_io
from conftest import require_qemu
from images.driver import DATA, UNALLOCATED, ZERO, BlockImage, Run
from images.errors import ImageIOError

CLUSTER = 65536


class MemImage(BlockImage):
    """An in-memory image without backing: qcow2-like 64 KiB cluster allocation."""

    format_name = "mem"

    def __init__(self, size, fail_reads=False):
        super().__init__("mem", False)
        self.virtual_size, self.cluster_size = size, CLUSTER
        self.data = bytearray(size)
        self.kinds = [UNALLOCATED] * ((size + CLUSTER - 1) // CLUSTER)
        self.fail_reads = fail_reads

    def read(self, offset, length):
        if self.fail_reads:
            raise ImageIOError(errno=5)
        return bytes(self.data[offset:offset + length])

    def write(self, offset, data):
        self.data[offset:offset + len(data)] = data
        for c in range(offset // CLUSTER, (offset + len(data) + CLUSTER - 1) // CLUSTER):
            self.kinds[c] = DATA

    def write_zeroes(self, offset, length):
        self.data[offset:offset + length] = bytes(length)
        for c in range(offset // CLUSTER, (offset + length + CLUSTER - 1) // CLUSTER):
            whole = offset <= c * CLUSTER and (c + 1) * CLUSTER <= offset + length
            self.kinds[c] = ZERO if whole or self.kinds[c] != DATA else DATA

    def discard(self, offset, length):
        self.write_zeroes(offset, length)

    def block_status(self, offset, length):
        runs = []
        for c in range(offset // CLUSTER, (offset + length + CLUSTER - 1) // CLUSTER):
            start, end = max(offset, c * CLUSTER), min(offset + length, (c + 1) * CLUSTER)
            if runs and runs[-1].kind == self.kinds[c]:
                runs[-1] = Run(self.kinds[c], runs[-1].offset, end - runs[-1].offset)
            else:
                runs.append(Run(self.kinds[c], start, end - start))
        return runs


def qio(image, command):
    return run_qemu_io(image, command)


def test_write_read_and_pattern():
    image = MemImage(4 << 20)
    assert qio(image, "write -P 0xab 0 64k") == ("wrote 65536/65536 bytes at offset 0\n", True)
    assert image.data[:65536] == b"\xab" * 65536
    assert qio(image, "read -P 0xab 0 512") == ("read 512/512 bytes at offset 0\n", True)
    assert qio(image, "read -P 0xcd 0 512") == (
        "Pattern verification failed at offset 0, 512 bytes\nread 512/512 bytes at offset 0\n", False)
    assert qio(image, "r -P0xab 1k 1k") == ("read 1024/1024 bytes at offset 1024\n", True)
    assert qio(image, "write 1M 1k")[0] == "wrote 1024/1024 bytes at offset 1048576\n"
    assert image.data[1 << 20] == 0xcd                     # qemu-io's default write pattern
    assert qio(image, "write -P 017 2M 1") == ("wrote 1/1 bytes at offset 2097152\n", True)
    assert image.data[2 << 20] == 0o17


def test_zero_discard_map_alloc():
    image = MemImage(4 << 20)
    qio(image, "write -P 1 0 64k")
    assert qio(image, "write -z 64k 64k") == ("wrote 65536/65536 bytes at offset 65536\n", True)
    assert qio(image, "discard 3M 64k") == ("discard 65536/65536 bytes at offset 3145728\n", True)
    assert qio(image, "map") == (
        "128 KiB (0x20000) bytes     allocated at offset 0 bytes (0x0)\n"
        "2.875 MiB (0x2e0000) bytes not allocated at offset 128 KiB (0x20000)\n"
        "64 KiB (0x10000) bytes     allocated at offset 3 MiB (0x300000)\n"
        "960 KiB (0xf0000) bytes not allocated at offset 3.062 MiB (0x310000)\n", True)
    assert qio(image, "alloc 0 64k") == ("65536/65536 bytes allocated at offset 0 bytes\n", True)
    assert qio(image, "alloc 64k") == ("512/512 bytes allocated at offset 64 KiB\n", True)
    assert qio(image, "alloc 0 4M") == ("196608/4194304 bytes allocated at offset 0 bytes\n", True)
    assert qio(image, "alloc 4095k 64k") == ("0/1024 bytes allocated at offset 3.999 MiB\n", True)
    assert qio(image, "alloc 5M") == ("0/0 bytes allocated at offset 5 MiB\n", True)


@pytest.mark.parametrize("command, text", [
    ("bogus", 'command "bogus" not found\n'),
    ("read", "bad argument count 0 to read, expected at least 2 arguments\n"),
    ("write 0", "bad argument count 1 to write, expected at least 2 arguments\n"),
    ("map x", "bad argument count 1 to map, expected 0 arguments\n"),
    ("alloc 0 1 2", "bad argument count 3 to alloc, expected between 1 and 2 arguments\n"),
    ("write abc 1", "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- abc\n"),
    ("read 0 99999999999999999999", "Parsing error: argument too large -- 99999999999999999999\n"),
    ("alloc 8E", "Parsing error: argument too large -- 8E\n"),
    ("write -P 256 0 512", "256 is not a valid pattern byte\n"),
    ("write -P -1 0 1", "-1 is not a valid pattern byte\n"),
    ("write -z -P 5 0 512", "Only one of -z, -P, and -s can be specified at the same time\n"),
    # The usage lines list only the options we implement (qemu-io's also name -abCcfns).
    ("write -x 0 1", "write: invalid option -- 'x'\nwrite [-qz] [-P pattern] "
                     "off len -- writes a number of bytes at a specified offset\n"),
    ("write -v 0 1", "write: invalid option -- 'v'\nwrite [-qz] [-P pattern] "
                     "off len -- writes a number of bytes at a specified offset\n"),
    ("read -C 0 1", "read: invalid option -- 'C'\nread [-qv] [-P pattern] off len "
                    "-- reads a number of bytes at a specified offset\n"),
    ("read 0 -1", "read: invalid option -- '1'\nread [-qv] [-P pattern] off len "
                  "-- reads a number of bytes at a specified offset\n"),
    ("read 0 512 extra", "read [-qv] [-P pattern] off len -- reads a number of "
                         "bytes at a specified offset\n"),
    ("discard -C 0 1", "discard: invalid option -- 'C'\ndiscard [-q] off len "
                       "-- discards a number of bytes at a specified offset\n"),
    ("read 5M 512", "read failed: Input/output error\n"),
    ("write 4095k 2k", "write failed: Input/output error\n"),
    ("discard 5M 1", "discard failed: Input/output error\n"),
    ("read 0 3G", "length cannot exceed 2147483136, given 3G\n"),
    ("write 0 3G", "length cannot exceed 2147483136 without -n, given 3G\n"),
])
def test_errors(command, text):
    image = MemImage(4 << 20)
    assert qio(image, command) == (text, False)
    assert image.kinds == [UNALLOCATED] * 64


def test_io_error_from_the_image():
    assert qio(MemImage(1 << 20, fail_reads=True), "read 0 1") == (
        "read failed: Input/output error\n", False)


def test_empty_command_does_nothing():
    assert qio(MemImage(1 << 20), "  ") == ("", True)


@pytest.mark.parametrize("value, text", [
    (0, "0 bytes"), (100, "100 bytes"), (1536, "1.500 KiB"), (65536, "64 KiB"),
    (3 << 20, "3 MiB"), (0x310000, "3.062 MiB"), (1 << 30, "1 GiB"), (1025, "1.001 KiB"),
])
def test_cvtstr(value, text):
    assert cvtstr(value) == text


ORACLE_SCRIPT = [
    "write -P 0xab 0 64k", "write -z 64k 64k", "read -P 0xab 0 512", "read -P 0xcd 0 512",
    "write 1M 1k", "write -P 0x1 3M 4k", "discard 3M 64k", "map", "alloc 0 64k", "alloc 64k",
    "alloc 0 4M", "alloc 128k 64k", "alloc 4095k 64k", "read 1 1", "read 0 1.5k", "read 0 0",
    "write -P 256 0 512", "read", "write abc 1", "bogus", "read 5M 512", "map x",
    "read 0 99999999999999999999", "alloc 8E", "write -P 017 2M 1", "read -P 15 2M 1",
    # -v (hex dump) and -q (quiet), byte for byte as qemu-io prints them
    "write -P 0x20 5120 3", "write -P 0xe9 5123 2", "write -P 0x7a 5125 1", "read -v 5114 40",
    "read -v 0 32", "read -v 65530 40", "read -v 2M 1", "read -v 0 0", "read -vv 1M 16",
    "read -v -P 0xab 0 16", "read -v -P 0 0 20", "read -q 0 512", "read -qv -P 0xcd 0 16",
    "read -q", "write -q -P 0x41 4k 20", "read -v 4090 40", "write -qz 8k 512",
    "discard -q 3M 64k", "r -vP0xab 16 16",
]


def test_against_real_qemu_io(tmp_path):
    """Same commands on a fresh qcow2 via qemu-io and on the double: same lines, minus timing."""
    require_qemu()
    path = str(tmp_path / "t.qcow2")
    subprocess.run(["qemu-img", "create", "-f", "qcow2", path, "4M"], check=True,
                   capture_output=True)
    image = MemImage(4 << 20)
    for command in ORACLE_SCRIPT:
        real = subprocess.run(["qemu-io", "-c", command, path], capture_output=True, text=True)
        expected = "".join(line for line in (real.stdout + real.stderr).splitlines(True)
                           if " ops; " not in line)
        assert qio(image, command) == (expected, real.returncode == 0), command


# -- qemu-io -v: the hex dump, through the console -------------------------------------
def test_qemu_io_read_v_through_the_monitor(two_chains):
    from commands.hmp import HmpInterpreter
    core, _tmp = two_chains
    hmp = HmpInterpreter(core)
    assert hmp.run_line('qemu-io virtio0 "write -P 0x41 16 20"').ok
    result = hmp.run_line('qemu-io virtio0 "read -v 0 40"')
    assert result.output == (
        "00000000:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................\n"
        "00000010:  41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41  AAAAAAAAAAAAAAAA\n"
        "00000020:  41 41 41 41 00 00 00 00  AAAA....\n"
        "read 40/40 bytes at offset 0\n")
    assert result.ok
    assert hmp.run_line('qemu-io virtio0 "read -v 0 512"').output.count("\n") == 32 + 1
