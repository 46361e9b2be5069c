"""A real guest for the tests: Debian's kernel and a busybox initramfs booted under qemu-system-x86_64.

The initramfs is built here, in Python, from what Debian installs: ``/bin/busybox``
(``busybox-static``) with a link per applet, and the kernel's ``virtio_pci`` and
``virtio_blk`` modules with their dependencies (from ``modules.dep``; compressed
modules are decompressed, busybox's ``insmod`` reads plain ``.ko`` only).  That
base archive is built once per test session; each boot appends a small archive
holding ``/init`` (a test's shell script, wrapped) and the test's files: the
kernel unpacks concatenated cpio archives in order.

``boot_guest`` boots the kernel with TCG, the disk ``-drive DRIVE,if=virtio``,
captures the serial console, waits for the guest to power off and returns the
console text (and the seconds it took).  The init script mounts /proc, /sys and /dev, loads the modules,
waits for ``/dev/vda``, runs the test's body under ``set -e`` and powers off;
a body that fails, a guest that never powers off (the timeout is a hang guard,
not a speed assertion) or a kernel panic raise ``GuestFailed`` with the console.
"""
import atexit
import glob
import gzip
import hashlib
import lzma
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import time

from conftest import skip_or_fail

BUSYBOX = "/bin/busybox"
QEMU = "qemu-system-x86_64"
MODULES = ("virtio_pci", "virtio_blk")     # the PCI transport and the disk driver
HINT = ("needs qemu-system-x86_64, a kernel in /boot and busybox-static: apt-get install -y "
        "qemu-system-x86 linux-image-amd64 busybox-static")
EXIT_MARK = "blockmon-guest-exit:"
BOOT_TIMEOUT = 120      # seconds: a hang guard only (a boot takes about 10 s with TCG)


class GuestFailed(AssertionError):
    """The guest's script failed, it never powered off, or QEMU failed; carries the console."""


# -- what the host has ------------------------------------------------------------------------

def _version_key(version):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", version)]


def find_kernel():
    """(vmlinuz path, modules directory) of the newest kernel in /boot that has its modules, or None."""
    found = []
    for vmlinuz in glob.glob("/boot/vmlinuz-*"):
        version = vmlinuz[len("/boot/vmlinuz-"):]
        modules = os.path.join("/lib/modules", version)
        if os.access(vmlinuz, os.R_OK) and os.path.exists(os.path.join(modules, "modules.dep")):
            found.append((_version_key(version), vmlinuz, modules))
    return max(found)[1:] if found else None


def is_static_elf(path):
    """True for an ELF executable without a program interpreter (PT_INTERP): it runs alone."""
    with open(path, "rb") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:     # 64-bit ELF only
            return False
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def missing_parts():
    missing = [] if shutil.which(QEMU) else [QEMU]
    if find_kernel() is None:
        missing.append("a readable /boot/vmlinuz-* with its /lib/modules")
    if not (os.path.exists(BUSYBOX) and is_static_elf(BUSYBOX)):
        missing.append("a static %s" % BUSYBOX)
    return missing


def require_guest_vm():
    """Skip (or fail under BLOCKMON_REQUIRE_QEMU=1) unless a real guest can be booted here."""
    missing = missing_parts()
    if not missing:
        return
    skip_or_fail("%s missing; %s" % (", ".join(missing), HINT))


# -- cpio (newc) ---------------------------------------------------------------------------------

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


class Cpio:
    """Writes a cpio archive in the "newc" format the kernel's initramfs unpacker reads."""

    def __init__(self):
        self.parts = []
        self.inode = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0)):
        name_bytes = name.encode() + b"\0"
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_bytes), 0)
        self.inode += 1
        header = b"070701" + b"".join(b"%08x" % field for field in fields)
        self.parts += [header, name_bytes, b"\0" * (-(len(header) + len(name_bytes)) % 4),
                       data, b"\0" * (-len(data) % 4)]

    def directory(self, name):
        self._entry(name, S_IFDIR | 0o755)

    def file(self, name, data, mode=0o644):
        self._entry(name, S_IFREG | mode, data)

    def symlink(self, name, target):
        self._entry(name, S_IFLNK | 0o777, target.encode())

    def char_device(self, name, major, minor):
        self._entry(name, S_IFCHR | 0o600, rdev=(major, minor))

    def gzipped(self):
        self._entry("TRAILER!!!", 0)
        return gzip.compress(b"".join(self.parts), compresslevel=1)


# -- the initramfs -----------------------------------------------------------------------------

def module_load_order(modules_dir, names):
    """Relative paths of the named modules and their dependencies, each after what it needs."""
    depends = {}
    with open(os.path.join(modules_dir, "modules.dep"), encoding="utf-8") as handle:
        for line in handle:
            path, _, needs = line.partition(":")
            depends[path] = needs.split()
    by_name = {re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(p)).replace("-", "_"): p for p in depends}
    order = []

    def visit(path):
        if path not in order:
            for needed in depends.get(path, ()):
                visit(needed)
            order.append(path)

    for name in names:
        visit(by_name[name])
    return order


def plain_module_name(path):
    """``virtio_blk.ko`` for ``.../virtio_blk.ko.xz``: the name the module has in the initramfs."""
    return re.sub(r"\.ko\.\w+$", ".ko", os.path.basename(path))


def read_module(path):
    """A module's plain ELF bytes, whatever compression Debian installed it with."""
    with open(path, "rb") as handle:
        data = handle.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise GuestFailed("%s is zstd-compressed: pip install zstandard" % path) from None
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def busybox_applets():
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    return sorted(set(out.split()) - {"busybox"})


def base_archive(modules_dir):
    """busybox, its applet links, the modules and the mount points, gzipped (no /init)."""
    cpio = Cpio()
    for name in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        cpio.directory(name)
    cpio.char_device("dev/console", 5, 1)   # the kernel opens it for init's stdin/out/err
    with open(BUSYBOX, "rb") as handle:
        cpio.file("bin/busybox", handle.read(), 0o755)
    for applet in busybox_applets():
        cpio.symlink("bin/" + applet, "busybox")
    for path in module_load_order(modules_dir, MODULES):
        cpio.file("lib/modules/" + plain_module_name(path), read_module(os.path.join(modules_dir, path)))
    return cpio.gzipped()


def init_script(body, modules):
    loads = "".join("insmod /lib/modules/%s\n" % name for name in modules)
    return ("#!/bin/sh\nexport PATH=/bin\n"
            "mount -t proc proc /proc\nmount -t sysfs sysfs /sys\nmount -t devtmpfs dev /dev\n"
            + loads +
            "n=0\nwhile [ ! -b /dev/vda ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done\n"
            "echo\n(\nset -e\n%s\n)\necho %s $?\nsync\npoweroff -f\n" % (body, EXIT_MARK))


_cache = {}


def initramfs(body, files, directory):
    """Path of an initrd: the session's base archive followed by /init and the test's files."""
    vmlinuz, modules_dir = find_kernel()
    if modules_dir not in _cache:
        cache_dir = tempfile.mkdtemp(prefix="blockmon-initramfs-")
        atexit.register(shutil.rmtree, cache_dir, True)
        _cache[modules_dir] = base = os.path.join(cache_dir, "base.cpio.gz")
        with open(base, "wb") as handle:
            handle.write(base_archive(modules_dir))
    modules = [plain_module_name(path) for path in module_load_order(modules_dir, MODULES)]
    extra = Cpio()
    extra.file("init", init_script(body, modules).encode(), 0o755)
    made = set()
    for name, data in sorted((files or {}).items()):
        name = name.lstrip("/")
        parent = os.path.dirname(name)
        while parent and parent not in made:   # the unpacker makes no missing parents
            extra.directory(parent)
            made.add(parent)
            parent = os.path.dirname(parent)
        extra.file(name, data)
    path = os.path.join(directory, "initrd.cpio.gz")
    with open(path, "wb") as out, open(_cache[modules_dir], "rb") as base:
        out.write(base.read())
        out.write(b"\0" * (-out.tell() % 4) + extra.gzipped())
    return vmlinuz, path


# -- booting ---------------------------------------------------------------------------------

def qemu_argv(vmlinuz, initrd, drive):
    return [QEMU, "-machine", "q35", "-accel", "tcg", "-m", "256", "-nodefaults", "-nographic",
            "-serial", "stdio", "-no-reboot", "-kernel", vmlinuz, "-initrd", initrd,
            "-append", "console=ttyS0 panic=-1 quiet", "-drive", drive + ",if=virtio"]


def boot_guest(drive, body, directory, files=None, timeout=BOOT_TIMEOUT):
    """Boot a guest whose /dev/vda is ``drive`` (QEMU's -drive value without ``if``), run ``body``
    in its init script, and return (console text, seconds from start to power-off)."""
    vmlinuz, initrd = initramfs(body, files, directory)
    console_path = os.path.join(directory, "console.log")
    start = time.monotonic()
    with open(console_path, "wb") as console:
        proc = subprocess.Popen(qemu_argv(vmlinuz, initrd, drive), stdin=subprocess.DEVNULL,
                                stdout=console, stderr=subprocess.STDOUT)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = None
    elapsed = time.monotonic() - start
    with open(console_path, "rb") as console:
        text = console.read().decode("utf-8", "replace").replace("\r\n", "\n")
    text = re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|.)", "", text)    # the firmware's screen resets
    if status is None:
        raise GuestFailed("the guest did not power off within %d s; console:\n%s" % (timeout, text))
    mark = re.search(r"^%s (\d+)$" % EXIT_MARK, text, re.M)
    if status != 0 or mark is None or mark.group(1) != "0":
        raise GuestFailed("the guest failed (QEMU exit status %s, script status %s); console:\n%s"
                          % (status, mark.group(1) if mark else "none", text))
    return text, elapsed


# -- what the guest writes, and checking it arrived ------------------------------------------

class GuestWrites:
    """Known writes a guest makes with ``dd ... conv=fsync``: each (offset, length) gets its own
    pseudo-random bytes (a write landing at the wrong place or half-done shows), sector-aligned."""

    def __init__(self, extents, pause=0):
        self.writes = [(offset, random.Random(offset).randbytes(length)) for offset, length in extents]
        self.pause = pause      # seconds between writes: keeps a guest writing while a job runs

    def files(self):
        return {"w/%d" % index: data for index, (_offset, data) in enumerate(self.writes)}

    def script(self):
        lines = []
        for index, (offset, _data) in enumerate(self.writes):
            assert offset % 512 == 0
            lines.append("dd if=/w/%d of=/dev/vda bs=512 seek=%d conv=fsync" % (index, offset // 512))
            if self.pause:
                lines.append("sleep %s" % self.pause)
        return "\n".join(lines)

    def expect(self, original_raw, expected_raw):
        """Write the guest view the disk must have afterwards: the original with the writes applied."""
        shutil.copyfile(original_raw, expected_raw)
        with open(expected_raw, "r+b") as handle:
            for offset, data in self.writes:
                handle.seek(offset)
                handle.write(data)


def guest_view(image, raw, fmt="qcow2"):
    """qemu-img's view of what a guest reads from ``image``, as a raw file."""
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", image, raw], check=True)
    return raw


def first_difference(path_a, path_b, block=1 << 20):
    """The first byte offset where two files differ (or their shorter length), None if equal."""
    with open(path_a, "rb") as a, open(path_b, "rb") as b:
        offset = 0
        while True:
            chunk_a, chunk_b = a.read(block), b.read(block)
            if chunk_a != chunk_b:
                return offset + next((i for i, (x, y) in enumerate(zip(chunk_a, chunk_b)) if x != y),
                                     min(len(chunk_a), len(chunk_b)))
            if not chunk_a:
                return None
            offset += len(chunk_a)


# -- a guest's work on the benchmark chain (bench/make_chain.py, 256 MiB) ---------------------

K, M = 1024, 1024 * 1024
# Against the chain's layout (bench/make_chain.py): inside a cluster D allocated by a partial
# write; across the start of a B run; into D's zero clusters; over D data and past it; a
# cluster unallocated everywhere; a large unaligned write; the disk's last sector.
CHAIN_EXTENTS = [(M + 8 * K + 512, 512), (5 * M + 511 * K, 2 * K), (40 * M + 64 * K, 8 * K),
                 (3 * M + 252 * K, 200 * K), (7 * M + 64 * K, 64 * K), (100 * M + 4 * K, M),
                 (256 * M - 512, 512)]
READ_BACK = 8 * M       # the guest's checksum of the first MiBs, before it writes


def chain_body(writes):
    """The guest's script: print ``read-md5 <md5>`` of the first READ_BACK bytes, then write."""
    return ("dd if=/dev/vda bs=65536 count=%d 2>/dev/null | md5sum | sed 's/^/read-md5 /'\n%s"
            % (READ_BACK // 65536, writes.script()))


def md5_of_start(raw):
    """What the guest's ``read-md5`` must say for a disk whose guest view is ``raw``."""
    with open(raw, "rb") as handle:
        return hashlib.md5(handle.read(READ_BACK)).hexdigest()
