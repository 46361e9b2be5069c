"""images/chain.py: opening backing chains (relative names, recorded formats, loops,
missing files, depth) and reading through them, against qemu-img as the oracle."""
import hashlib
import json
import os

import pytest

from conftest import run
from images.chain import (MAX_CHAIN_DEPTH, chain_of, close_chain, open_image, probe_format,
                          resolve_backing_path)
from images.driver import BlockImage
from images.errors import ChainError, ImageError
from images.qcow2.format import QCOW2_MAGIC
from images.raw import RawImage, create_raw

FAKE_MAGIC = b"FAKE\n"


def make_fake_driver(log):
    """A format whose file is FAKE_MAGIC + JSON {size, backing, backing_format}; opens and
    closes are appended to ``log``."""

    class FakeImage(BlockImage):
        format_name = "fake"

        @classmethod
        def open(cls, path, read_only=False):
            with open(path, "rb") as f:
                content = f.read()
            if not content.startswith(FAKE_MAGIC):
                raise ImageError("Could not open '%s': not a fake image" % path, path=path)
            header = json.loads(content[len(FAKE_MAGIC):])
            image = cls(path, read_only)
            image.virtual_size = header["size"]
            image.backing_name = header.get("backing")
            image.backing_format = header.get("backing_format")
            log.append(("open", path, read_only))
            return image

        def close(self):
            log.append(("close", self.path))

    return {"fake": FakeImage}


def write_fake(path, backing=None, backing_format="fake", size=65536):
    with open(path, "wb") as f:
        f.write(FAKE_MAGIC + json.dumps({"size": size, "backing": backing,
                                         "backing_format": backing_format if backing else None}).encode())
    return str(path)


@pytest.fixture
def log():
    return []


@pytest.fixture
def drivers(log):
    return make_fake_driver(log)


def test_relative_names_resolve_against_the_naming_image_not_the_cwd(tmp_path, monkeypatch, drivers, log):
    (tmp_path / "base").mkdir()
    (tmp_path / "top").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_fake(tmp_path / "base" / "A.img")
    write_fake(tmp_path / "base" / "B.img", backing="A.img")
    write_fake(tmp_path / "top" / "C.img", backing="../base/B.img")
    monkeypatch.chdir(elsewhere)
    top = open_image("../top/C.img", format="fake", drivers=drivers)
    paths = [image.path for image in chain_of(top)]
    assert paths == [str(elsewhere / ".." / "top" / "C.img"),
                     str(elsewhere / ".." / "top" / ".." / "base" / "B.img"),
                     str(elsewhere / ".." / "top" / ".." / "base" / "A.img")]
    assert [os.path.realpath(p) for p in paths[1:]] == [str(tmp_path / "base" / "B.img"),
                                                        str(tmp_path / "base" / "A.img")]
    assert [image.read_only for image in chain_of(top)] == [False, True, True]
    assert resolve_backing_path(top) == paths[1]
    assert resolve_backing_path(chain_of(top)[2]) is None
    close_chain(top)
    assert [entry[0] for entry in log] == ["open"] * 3 + ["close"] * 3


def test_backing_read_only_false_opens_the_chain_writable(tmp_path, drivers):
    write_fake(tmp_path / "A.img")
    top = open_image(write_fake(tmp_path / "B.img", backing="A.img"), format="fake", read_only=True,
                     backing_read_only=False, drivers=drivers)
    assert [image.read_only for image in chain_of(top)] == [True, False]


def test_absolute_backing_name_is_used_as_is(tmp_path, drivers):
    base = write_fake(tmp_path / "A.img")
    (tmp_path / "sub").mkdir()
    top = open_image(write_fake(tmp_path / "sub" / "B.img", backing=base), format="fake", drivers=drivers)
    assert top.backing.path == base


def test_loop_names_the_chain_and_closes_what_it_opened(tmp_path, drivers, log):
    write_fake(tmp_path / "A.img", backing="B.img")
    write_fake(tmp_path / "B.img", backing="A.img")
    with pytest.raises(ChainError) as caught:
        open_image(str(tmp_path / "A.img"), format="fake", drivers=drivers)
    a, b = str(tmp_path / "A.img"), str(tmp_path / "B.img")
    assert caught.value.desc == "Backing chain loop: %s -> %s -> %s" % (a, b, a)
    assert caught.value.chain == [a, b, a]
    assert sorted(entry[1] for entry in log if entry[0] == "close") == [a, b]


def test_self_loop(tmp_path, drivers):
    a = write_fake(tmp_path / "A.img", backing="./A.img")
    with pytest.raises(ChainError) as caught:
        open_image(a, format="fake", drivers=drivers)
    assert caught.value.desc == "Backing chain loop: %s -> %s" % (a, a)


def test_missing_backing_file_names_the_chain(tmp_path, drivers, log):
    write_fake(tmp_path / "B.img", backing="X.img")
    write_fake(tmp_path / "C.img", backing="B.img")
    d = write_fake(tmp_path / "D.img", backing="C.img")
    with pytest.raises(ChainError) as caught:
        open_image(d, format="fake", drivers=drivers)
    c, b = str(tmp_path / "C.img"), str(tmp_path / "B.img")
    assert caught.value.desc == (
        "Could not open backing file 'X.img' of %s: No such file or directory (chain: %s -> %s -> %s)"
        % (b, d, c, b))
    assert len([entry for entry in log if entry[0] == "close"]) == 3


def test_unopenable_backing_file_carries_the_drivers_reason(tmp_path, drivers):
    (tmp_path / "A.img").write_bytes(b"garbage")
    b = write_fake(tmp_path / "B.img", backing="A.img")
    with pytest.raises(ChainError) as caught:
        open_image(b, format="fake", drivers=drivers)
    assert caught.value.desc == "Could not open backing file 'A.img' of %s: not a fake image (chain: %s)" % (b, b)


def test_recorded_unknown_format(tmp_path, drivers):
    write_fake(tmp_path / "A.img")
    b = write_fake(tmp_path / "B.img", backing="A.img", backing_format="vmdk")
    with pytest.raises(ChainError) as caught:
        open_image(b, format="fake", drivers=drivers)
    assert caught.value.desc == "Could not open backing file 'A.img' of %s: Unknown driver 'vmdk' (chain: %s)" % (b, b)


def deep_fake_chain(directory, images):
    write_fake(directory / "0.img")
    for index in range(1, images):
        write_fake(directory / ("%d.img" % index), backing="%d.img" % (index - 1))
    return str(directory / ("%d.img" % (images - 1)))


def test_chain_of_max_depth_opens(tmp_path, drivers):
    top = open_image(deep_fake_chain(tmp_path, MAX_CHAIN_DEPTH), format="fake", drivers=drivers)
    assert len(chain_of(top)) == MAX_CHAIN_DEPTH == 128


def test_chain_deeper_than_max_is_refused(tmp_path, drivers, log):
    top = deep_fake_chain(tmp_path, 130)
    with pytest.raises(ChainError) as caught:
        open_image(top, format="fake", drivers=drivers)
    walked = [str(tmp_path / ("%d.img" % index)) for index in range(129, 1, -1)]
    assert caught.value.desc == "Backing chain too deep: more than 128 images (chain: %s)" % " -> ".join(walked)
    assert caught.value.chain == walked
    assert len([entry for entry in log if entry[0] == "close"]) == 128


def test_recorded_raw_is_never_probed(tmp_path, drivers):
    base = tmp_path / "base.raw"
    base.write_bytes(QCOW2_MAGIC + bytes(65532))        # looks like qcow2 to a prober
    top = open_image(write_fake(tmp_path / "T.img", backing="base.raw", backing_format="raw"),
                     format="fake", drivers=drivers)
    assert isinstance(top.backing, RawImage)
    assert top.backing.read(0, 4) == b"QFI\xfb"


def test_no_recorded_format_probes(tmp_path, drivers):
    create_raw(str(tmp_path / "base.raw"), 65536)
    top = open_image(write_fake(tmp_path / "T.img", backing="base.raw", backing_format=None),
                     format="fake", drivers=drivers)
    assert isinstance(top.backing, RawImage)


def test_probe_format(tmp_path):
    (tmp_path / "q").write_bytes(QCOW2_MAGIC + b"\0\0\0\3")
    (tmp_path / "r").write_bytes(QCOW2_MAGIC[:3])
    assert (probe_format(str(tmp_path / "q")), probe_format(str(tmp_path / "r"))) == ("qcow2", "raw")


def test_explicit_qcow2_on_a_raw_file_is_refused(tmp_path):
    path = str(tmp_path / "disk.raw")
    create_raw(path, 65536)
    with pytest.raises(ImageError) as caught:
        open_image(path, format="qcow2")
    assert caught.value.desc == "Could not open '%s': Image is not in qcow2 format" % path


def test_unknown_explicit_format_and_missing_top(tmp_path):
    path = str(tmp_path / "disk.raw")
    create_raw(path, 65536)
    with pytest.raises(ImageError) as caught:
        open_image(path, format="vdi")
    assert caught.value.desc == "Could not open '%s': Unknown driver 'vdi'" % path
    with pytest.raises(ImageError) as caught:
        open_image(str(tmp_path / "none.qcow2"))
    assert caught.value.desc == "Could not open '%s': No such file or directory" % (tmp_path / "none.qcow2")


def test_raw_top_opens_alone(tmp_path):
    path = str(tmp_path / "disk.raw")
    create_raw(path, 65536)
    top = open_image(path)
    assert isinstance(top, RawImage) and chain_of(top) == [top]
    close_chain(top)


# -- real qcow2 chains made by qemu-img ---------------------------------------------

def qemu_create(directory, name, size="4M", backing=None, backing_format="qcow2", unsafe=False):
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-b", backing, "-F", backing_format] + (["-u"] if unsafe else [])
    run(*argv, name, size, cwd=str(directory))
    return str(directory / name)


def sha256_of_chain(top, chunk=4 << 20):
    digest = hashlib.sha256()
    for offset in range(0, top.virtual_size, chunk):
        digest.update(top.read(offset, min(chunk, top.virtual_size - offset)))
    return digest.hexdigest()


def sha256_of_convert(path, tmp_path, chunk=4 << 20):
    target = str(tmp_path / "converted.raw")
    run("qemu-img", "convert", "-O", "raw", path, target)
    digest = hashlib.sha256()
    with open(target, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    os.unlink(target)
    return digest.hexdigest()


def test_three_deep_relative_chain_from_another_cwd(qemu_img, tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    qemu_create(images, "A.qcow2")
    qemu_create(images, "B.qcow2", backing="A.qcow2")
    qemu_create(images, "C.qcow2", backing="B.qcow2")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xa1 0 2M", str(images / "A.qcow2"))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xb2 1M 1M", "-c", "write -z 3M 64k", str(images / "B.qcow2"))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xc3 1536k 4k", str(images / "C.qcow2"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    top = open_image("../images/C.qcow2", read_only=True)
    try:
        assert [os.path.basename(image.path) for image in chain_of(top)] == ["C.qcow2", "B.qcow2", "A.qcow2"]
        assert [image.format_name for image in chain_of(top)] == ["qcow2"] * 3
        assert sha256_of_chain(top) == sha256_of_convert(str(images / "C.qcow2"), tmp_path)
        assert top.read(1536 * 1024 - 2, 6) == b"\xb2\xb2\xc3\xc3\xc3\xc3"
    finally:
        close_chain(top)


def test_raw_base_with_qcow2_magic_reads_as_raw(qemu_img, tmp_path):
    base = str(tmp_path / "base.raw")
    run(qemu_img, "create", "-q", "-f", "raw", base, "1M")
    with open(base, "r+b") as f:
        f.write(QCOW2_MAGIC + b"\0\0\0\3" + b"\x5a" * 4088)      # a qcow2 magic and version as content
    top_path = qemu_create(tmp_path, "top.qcow2", size="2M", backing="base.raw", backing_format="raw")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 512k 4k", top_path)
    top = open_image(top_path, read_only=True)
    try:
        assert isinstance(top.backing, RawImage)
        assert top.read(0, 8) == b"QFI\xfb\0\0\0\3"
        assert sha256_of_chain(top) == sha256_of_convert(top_path, tmp_path)
    finally:
        close_chain(top)


def test_qcow2_loop_missing_and_deep(qemu_img, tmp_path):
    a = qemu_create(tmp_path, "A.qcow2", backing="B.qcow2", unsafe=True)
    b = qemu_create(tmp_path, "B.qcow2", backing="A.qcow2", unsafe=True)
    with pytest.raises(ChainError) as caught:
        open_image(a)
    assert caught.value.desc == "Backing chain loop: %s -> %s -> %s" % (a, b, a)
    m = qemu_create(tmp_path, "M.qcow2", backing="gone.qcow2", unsafe=True)
    with pytest.raises(ChainError) as caught:
        open_image(m)
    assert caught.value.desc == ("Could not open backing file 'gone.qcow2' of %s: "
                                 "No such file or directory (chain: %s)" % (m, m))
    deep = tmp_path / "deep"
    deep.mkdir()
    qemu_create(deep, "0.qcow2", size="1M")
    for index in range(1, 130):   # -u: qemu-img does not open the chain, so this stays linear
        qemu_create(deep, "%d.qcow2" % index, size="1M", backing="%d.qcow2" % (index - 1), unsafe=True)
    with pytest.raises(ChainError) as caught:
        open_image(str(deep / "129.qcow2"))
    assert caught.value.desc.startswith("Backing chain too deep: more than 128 images (chain: %s -> "
                                        % (deep / "129.qcow2"))
    assert caught.value.desc.endswith(" -> %s)" % (deep / "2.qcow2"))


def test_explicit_raw_on_a_qcow2_file_reads_the_container(qemu_img, tmp_path):
    path = qemu_create(tmp_path, "x.qcow2", size="1M")
    image = open_image(path, format="raw")
    try:
        assert isinstance(image, RawImage) and image.read(0, 4) == b"QFI\xfb"
    finally:
        close_chain(image)


def test_bench_chain_reads_like_qemu_img_convert(bench_chain_256m, tmp_path):
    path = os.path.join(bench_chain_256m, "D.qcow2")
    top = open_image(path, read_only=True)
    try:
        assert len(chain_of(top)) == 4
        assert sha256_of_chain(top) == sha256_of_convert(path, tmp_path)
    finally:
        close_chain(top)
