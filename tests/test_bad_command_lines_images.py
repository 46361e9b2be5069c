"""Issue 4, acceptance 6: malformed command lines against a real core on real images.

The corpus of tests/test_bad_command_lines.py (checked there against a fake core)
runs here through the real HMP interpreter and ``BlockCore`` on a qemu-img-made
chain ``A <- B <- C <- D`` (virtio0) and a second disk (ide0-hd0), plus lines that
parse but that the real core refuses.  Each line must print its exact error text,
start no job, publish no event, create no file, and leave every image file's
sha256 as it was (checked after the core has closed them).
"""
import hashlib
import os

import pytest

from commands.core import BlockCore
from commands.hmp import HmpInterpreter
from conftest import require_qemu, run
from test_bad_command_lines import CORPUS

SIZE = "8M"


def refused_by_the_core(d):
    """(line, text) that parse but are refused by the real core; ``d`` is the image directory."""
    return [
        ("block_stream nosuch", "Error: Cannot find device='nosuch' nor node-name='nosuch'\n"),
        ("block_stream virtio0 0 nosuch.qcow2", "Error: Can't find 'nosuch.qcow2' in the backing chain\n"),
        ("block_stream virtio0 0 D.qcow2", "Error: Can't find 'D.qcow2' in the backing chain\n"),
        ("block_stream virtio0 nosuch", "Error: Can't find 'nosuch' in the backing chain\n"),
        ("block_stream virtio0 0 %s/D.qcow2" % d, "Error: Can't find '%s/D.qcow2' in the backing chain\n" % d),
        ("block_job_cancel virtio0", "Error: Block job 'virtio0' not found\n"),
        ("block_job_cancel -f ide0-hd0", "Error: Block job 'ide0-hd0' not found\n"),
        ("block_job_set_speed virtio0 0", "Error: Block job 'virtio0' not found\n"),
        ("block_job_pause virtio0", "Error: Block job 'virtio0' not found\n"),
        ("block_job_resume virtio0", "Error: Block job 'virtio0' not found\n"),
        ("block_job_complete virtio0", "Error: Block job 'virtio0' not found\n"),
        ("block_job_wait virtio0", "Error: Block job 'virtio0' not found\n"),
        # QEMU's blockdev-snapshot-sync looks up the device only: node-name=''
        ("snapshot_blkdev nosuch %s/n.qcow2" % d, "Error: Cannot find device='nosuch' nor node-name=''\n"),
        ("snapshot_blkdev virtio0 %s/n.raw raw" % d, "Error: Backing file not supported for file format 'raw'\n"),
        ("snapshot_blkdev virtio0 %s/n.vmdk vmdk" % d, "Error: Unknown file format 'vmdk'\n"),
        ("snapshot_blkdev virtio0 %s/D.qcow2 qcow2" % d,
         "Error: Error: Trying to create an image with the same filename as the backing file\n"),
        ("snapshot_blkdev virtio0 %s/B.qcow2" % d,
         "Error: Could not create '%s/B.qcow2': it is image 'B' of a device's backing chain\n" % d),
        ("snapshot_blkdev ide0-hd0 %s/C.qcow2" % d,
         "Error: Could not create '%s/C.qcow2': it is image 'C' of a device's backing chain\n" % d),
        ("snapshot_blkdev virtio0 %s/nodir/n.qcow2" % d,
         "Error: Could not create '%s/nodir/n.qcow2': No such file or directory\n" % d),
        ("snapshot_blkdev -n virtio0 %s/missing.qcow2" % d,
         "Error: Could not open '%s/missing.qcow2': No such file or directory\n" % d),
        ("snapshot_blkdev -n virtio0 %s/C.qcow2" % d, "Error: The overlay is already in use\n"),
        ('qemu-io nosuch "read 0 512"', "Error: Cannot find device='nosuch' nor node-name='nosuch'\n"),
        ('qemu-io virtio0 "frob"', 'command "frob" not found\n'),
        ('qemu-io virtio0 "write -P 0x1 8M 512"', "write failed: Input/output error\n"),
        ('qemu-io virtio0 "write -P 0x1ff 0 512"', "0x1ff is not a valid pattern byte\n"),
        ('qemu-io virtio0 "write -z -P 1 0 512"', "Only one of -z, -P, and -s can be specified at the same time\n"),
        ('qemu-io virtio0 "discard 0 99999999999999999999"',
         "Parsing error: argument too large -- 99999999999999999999\n"),
        ("info block nosuch", ""),
    ]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A chain A <- B <- C <- D (relative backing names) and disk0, made by qemu-img and qemu-io."""
    require_qemu()
    directory = str(tmp_path_factory.mktemp("bad-lines"))
    layers = [("A", None, "0xa1", "0 2M"), ("B", "A", "0xb2", "1M 1M"), ("C", "B", "0xc3", "3M 512k"),
              ("D", "C", "0xd4", "5M 64k"), ("disk0", None, "0xe0", "0 1M")]
    for name, backing, pattern, where in layers:
        path = os.path.join(directory, name + ".qcow2")
        extra = ["-b", backing + ".qcow2", "-F", "qcow2"] if backing else []
        run("qemu-img", "create", "-q", "-f", "qcow2", *extra, path, SIZE, cwd=directory)
        run("qemu-io", "-c", "write -P %s %s" % (pattern, where), path)
    return directory


def fingerprint(directory):
    """Every file's sha256, by name (so a created file shows too)."""
    result = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as handle:
            result[name] = hashlib.sha256(handle.read()).hexdigest()
    return result


@pytest.fixture(scope="module")
def pristine(images):
    return fingerprint(images)


def run_refused(images, line):
    core = BlockCore()
    events = []
    core.events.subscribe(events.append)
    core.add_drive("virtio0", os.path.join(images, "D.qcow2"))
    core.add_drive("ide0-hd0", os.path.join(images, "disk0.qcow2"))
    try:
        result = HmpInterpreter(core).run_line(line)
        assert core.jobs() == [] and events == []
        assert core.device_names() == ["virtio0", "ide0-hd0"]
        assert core.active_image("virtio0").path == os.path.join(images, "D.qcow2")
    finally:
        core.shutdown()
    return result


@pytest.mark.parametrize("line, text", CORPUS, ids=[repr(line)[:40] for line, _t in CORPUS])
def test_malformed_line_on_real_images(images, pristine, line, text):
    result = run_refused(images, line)
    assert (result.output, result.ok) == (text, False)
    assert fingerprint(images) == pristine


REFUSED = refused_by_the_core("@DIR@")


@pytest.mark.parametrize("line, text", REFUSED, ids=[line[:40] for line, _t in REFUSED])
def test_refused_line_on_real_images(images, pristine, line, text):
    line, text = line.replace("@DIR@", images), text.replace("@DIR@", images)
    result = run_refused(images, line)
    # 'info block nosuch' lists nothing, as QEMU (no error there); everything else fails
    assert (result.output, result.ok) == (text, line.startswith("info block"))
    assert fingerprint(images) == pristine


def test_the_images_are_what_qemu_img_made(images, pristine):
    """Opening and closing the chain alone changes nothing (else every check above would be moot)."""
    run_refused(images, "info block")
    assert fingerprint(images) == pristine
    run("qemu-img", "check", os.path.join(images, "D.qcow2"))
