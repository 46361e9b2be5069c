"""``--demo``: build the seed's chain and a second disk, and (``--walkthrough``) play the seed.

The chain ``[A] <- [B] <- [C] <- [D]`` (virtio0) and ``disk0.qcow2`` (ide0-hd0)
are written with our own images/ code: each layer fills stripes with its own
byte (A: 0xAA, B: 0xBB, C: 0xCC, D: 0xDD; the second disk 0xE0), so ``info
blockmap`` and ``qemu-io read -P`` show which layer holds what.  The walkthrough
plays the seed's "live merge" and "live copy" scenarios through the HMP
interpreter, one narration line per step, and ends by checking that the
guest-visible content of both disks never changed.
"""
import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

from monitor.drive_options import DriveSpec

MiB = 1024 * 1024
VIRTUAL_SIZE = 256 * MiB
MARKER = ".blockmon-demo"
NEW_PATH = "new-path"
# (file, backing, byte, stripe length, stripe period, stripe start): data spread
# across the disk so a stream has real work at every offset.
LAYERS = (
    ("A.qcow2", None, 0xAA, 1 * MiB, 4 * MiB, 0),
    ("B.qcow2", "A.qcow2", 0xBB, 512 * 1024, 8 * MiB, 1 * MiB),
    ("C.qcow2", "B.qcow2", 0xCC, 256 * 1024, 16 * MiB, 2 * MiB),
    ("D.qcow2", "C.qcow2", 0xDD, 64 * 1024, 32 * MiB, 3 * MiB),
)
SECOND_DISK = ("disk0.qcow2", None, 0xE0, 1 * MiB, 8 * MiB, 0)
STREAM_SPEED = "6M"        # B and C hold ~20 MiB: a few seconds of visible progress


class DemoError(Exception):
    """The demo directory cannot be used; the message names it."""


@dataclass
class Demo:
    directory: str
    drives: List[DriveSpec]

    def summary(self) -> Tuple[str, str]:
        """The two lines the demo prints: what it made, what to type."""
        made = ("demo: virtio0 = [A] <- [B] <- [C] <- [D], ide0-hd0 = disk0 (%d MiB each) in %s"
                % (VIRTUAL_SIZE // MiB, self.directory))
        hint = ("try: info block, info blockmap virtio0, block_stream virtio0 %s A, info block-jobs, "
                "snapshot_blkdev ide0-hd0 %s qcow2" % (STREAM_SPEED, self.new_disk_path))
        return made, hint

    @property
    def new_disk_path(self) -> str:
        return os.path.join(self.directory, NEW_PATH, "disk.img")


def prepare_directory(directory: Optional[str]) -> str:
    """A new temporary directory, or DIR if it is empty or an earlier demo (refuse otherwise)."""
    if directory is None:
        return tempfile.mkdtemp(prefix="blockmon-demo-")
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise DemoError("demo directory %s is not a directory" % directory)
        if os.listdir(directory) and not os.path.exists(os.path.join(directory, MARKER)):
            raise DemoError("demo directory %s is not empty and holds no earlier demo" % directory)
    os.makedirs(directory, exist_ok=True)
    return directory


def write_layer(directory: str, layer) -> None:
    from images.qcow2 import Qcow2Image, create_qcow2
    name, backing, byte, length, period, start = layer
    path = os.path.join(directory, name)
    if os.path.exists(path):
        os.unlink(path)
    create_qcow2(path, VIRTUAL_SIZE, backing_name=backing,
                 backing_format="qcow2" if backing else None)
    image = Qcow2Image.open(path)
    try:
        stripe = bytes([byte]) * length
        for offset in range(start, VIRTUAL_SIZE, period):
            image.write(offset, stripe)
        image.flush()
    finally:
        image.close()


def build_demo(directory: Optional[str] = None) -> Demo:
    """Write the demo images into ``directory`` (or a new temporary one)."""
    directory = prepare_directory(directory)
    with open(os.path.join(directory, MARKER), "w") as marker:
        marker.write("made by blockmon --demo\n")
    for layer in LAYERS + (SECOND_DISK,):
        write_layer(directory, layer)
    new_path = os.path.join(directory, NEW_PATH)
    os.makedirs(new_path, exist_ok=True)
    stale = os.path.join(new_path, "disk.img")
    if os.path.exists(stale):
        os.unlink(stale)
    drives = [DriveSpec("virtio0", os.path.join(directory, "D.qcow2")),
              DriveSpec("ide0-hd0", os.path.join(directory, SECOND_DISK[0]))]
    return Demo(directory, drives)


def guest_digest(core, device: str, chunk: int = 4 * MiB) -> str:
    """sha256 of what the guest sees on ``device`` (read through the whole chain)."""
    image = core.active_image(device)
    digest = hashlib.sha256()
    for offset in range(0, image.virtual_size, chunk):
        digest.update(image.read(offset, min(chunk, image.virtual_size - offset)))
    return digest.hexdigest()


def walkthrough_steps(demo: Demo) -> List[Tuple[str, str]]:
    """(narration, command) pairs of the seed's two scenarios."""
    return [
        ("Live merge. virtio0 runs on the chain [A] <- [B] <- [C] <- [D]:", "info block virtio0"),
        ("Each layer holds stripes of its own byte; this is what a stream will copy:",
         "info blockmap virtio0"),
        ("Stream B and C into D, keeping A as the base, at %s bytes/s so it can be watched:"
         % STREAM_SPEED, "block_stream virtio0 %s A" % STREAM_SPEED),
        ("The job runs in the background; give it a second:", "sleep 1"),
        ("The monitor stays usable while it runs:", "info block-jobs"),
        ("Wait for the job (the completion event follows):", "block_job_wait virtio0"),
        ("Now the chain is [A] <- [D]:", "info block virtio0"),
        ("Live copy. Put a new overlay for ide0-hd0 in another directory:",
         "snapshot_blkdev ide0-hd0 %s qcow2" % demo.new_disk_path),
        ("The guest now writes to the new file, backed by the old disk:", "info block ide0-hd0"),
        ("Copy the old disk's data into the new file (full stream):", "block_stream ide0-hd0"),
        ("Wait for it:", "block_job_wait ide0-hd0"),
        ("The new file stands alone: no backing file left:", "info block ide0-hd0"),
    ]


def narrated_lines(steps, write: Callable[[str], None]) -> Iterator[str]:
    """Yield each command after writing its narration line."""
    for narration, command in steps:
        write("\n# %s\n" % narration)
        yield command


def play_walkthrough(core, demo: Demo, session, write: Callable[[str], None]) -> int:
    """Run the steps through ``session`` (a ScriptSession); check content; the exit status."""
    devices = [drive.device for drive in demo.drives]
    before = {device: guest_digest(core, device) for device in devices}
    ok = session.run_commands(narrated_lines(walkthrough_steps(demo), write))
    ok = session.finish_jobs() and ok
    write("\n# Closing check: the guest-visible content of every disk never changed:\n")
    for device in devices:
        after = guest_digest(core, device)
        same = after == before[device]
        ok = ok and same
        write("%s: sha256 %s before, %s after: %s\n"
              % (device, before[device][:16], after[:16], "unchanged" if same else "CHANGED"))
    return session.close(ok)
