"""Backing chains: opening an image with everything below it, and block status over a chain.

``open_image`` walks the stored backing names from the top down.  A relative name
resolves against the directory of the image that stores it (never the process's
working directory, QEMU's ``path_combine``); a recorded backing format is used as
is, so a raw base is never probed; loops, missing files and absurd depths give one
``ChainError`` line naming the chain walked so far.

``block_status_above`` answers "which layer decides each byte" by asking each layer
only about the ranges the layers above it leave unallocated, so its cost follows the
allocation, not the virtual size.  ``qemu_img_map`` reshapes the same answer into
``qemu-img map --output=json`` entries (QEMU's ``get_block_status`` in qemu-img.c).
"""
import os
from typing import Dict, Iterator, List, NamedTuple, Optional

from images.driver import DATA, UNALLOCATED, ZERO, BlockImage, Run
from images.errors import BlockError, ChainError, ImageError, ImageLockError, os_error_text
from images.qcow2.format import QCOW2_MAGIC
from images.raw import RawImage

MAX_CHAIN_DEPTH = 128          # images in one chain, the top included


def probe_format(path: str) -> str:
    """"qcow2" when the file starts with the qcow2 magic, else "raw" (QEMU's probe, reduced)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(QCOW2_MAGIC))
    except OSError as err:
        raise ImageError("Could not open '%s': %s" % (path, os_error_text(err)), path=path) from err
    return "qcow2" if magic == QCOW2_MAGIC else "raw"


def _absolute(path: str, directory: Optional[str] = None) -> str:
    """``path`` made absolute against ``directory`` (default: the cwd).

    Only empty and '.' components are dropped: '..' is kept because it means
    something different from string surgery when a directory is a symlink.
    """
    if not os.path.isabs(path):
        path = os.path.join(directory if directory is not None else os.getcwd(), path)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    return "/" + "/".join(parts)


def _driver_class(fmt: str, path: str, drivers: Optional[Dict[str, type]]):
    if drivers is not None and fmt in drivers:
        return drivers[fmt]
    if fmt == "raw":
        return RawImage
    if fmt == "qcow2":
        from images.qcow2.image import Qcow2Image   # imported late: raw-only use needs no qcow2
        return Qcow2Image
    raise ImageError("Could not open '%s': Unknown driver '%s'" % (path, fmt), path=path, value=fmt)


def _open_layer(path: str, fmt: Optional[str], read_only: bool, drivers,
                locking: bool = True, filename: Optional[str] = None) -> BlockImage:
    """Open (and lock) one file in ``fmt`` (probed when None); an explicit qcow2 must
    have the magic.  ``filename`` is the file as QEMU would name it in a lock error."""
    if fmt is None:
        fmt = probe_format(path)
    elif fmt == "qcow2" and probe_format(path) != "qcow2":
        raise ImageError("Could not open '%s': Image is not in qcow2 format" % path,
                         path=path, value=fmt)
    driver = _driver_class(fmt, path, drivers)
    if drivers is not None and fmt in drivers:      # test formats have no file to lock
        return driver.open(path, read_only=read_only)
    return driver.open(path, read_only=read_only, locking=locking, filename=filename)


def qemu_path_combine(base: str, name: str) -> str:
    """QEMU's path_combine: ``name`` relative to the directory part of ``base`` as
    written (no normalising), the name QEMU gives a backing file in its messages."""
    if name.startswith("/"):
        return name
    return base[:base.rfind("/") + 1] + name


def resolve_backing_path(image: BlockImage) -> Optional[str]:
    """The absolute path that ``image``'s stored backing name points to (None: no backing)."""
    if not image.backing_name:
        return None
    return _absolute(image.backing_name, os.path.dirname(_absolute(image.path)))


def _chain_text(images: List[BlockImage], extra: Optional[str] = None) -> str:
    names = [image.path for image in images] + ([extra] if extra else [])
    return " -> ".join(names)


def _file_identity(path: str):
    status = os.stat(path)
    return status.st_dev, status.st_ino


def open_image(path: str, format: Optional[str] = None, read_only: bool = False,
               backing_read_only: bool = True, drivers: Optional[Dict[str, type]] = None,
               locking: bool = True, filename: Optional[str] = None) -> BlockImage:
    """Open ``path`` and its whole backing chain, link every ``backing``, return the top.

    Every file is locked in its role (the top for its mode, backing files read-only,
    as QEMU's ``-drive``); ``locking=False`` is ``file.locking=off`` for the whole
    chain.  ``filename`` is the top as the user named it (default ``path``): lock
    errors name files as QEMU does.  ``drivers`` maps extra format names to classes
    with ``open(path, read_only)`` (tests use it for in-memory formats).  On any
    error every opened file is closed (and so unlocked).
    """
    names = [filename or path]
    top = _open_layer(_absolute(path), format, read_only, drivers, locking, names[0])
    chain = [top]
    try:
        seen = {_file_identity(top.path)}
        while chain[-1].backing_name:
            names.append(qemu_path_combine(names[-1], chain[-1].backing_name))
            chain.append(_open_backing(chain, seen, backing_read_only, drivers,
                                       locking=locking, filename=names[-1]))
    except BaseException:
        for image in chain:
            image.close()
        raise
    return top


def _open_backing(chain: List[BlockImage], seen: set, read_only: bool, drivers,
                  locking: bool = True, filename: Optional[str] = None) -> BlockImage:
    """Open (and lock, unless ``locking`` is false) the backing file of ``chain[-1]``,
    link it, and return it; ``filename`` names it in lock errors."""
    parent = chain[-1]
    name, target = parent.backing_name, resolve_backing_path(parent)
    try:
        identity = _file_identity(target)
    except OSError as err:
        raise _backing_error(chain, name, os_error_text(err)) from err
    if identity in seen:
        raise ChainError("Backing chain loop: %s" % _chain_text(chain, target),
                         chain=[image.path for image in chain] + [target], path=target)
    if len(chain) >= MAX_CHAIN_DEPTH:
        raise ChainError("Backing chain too deep: more than %d images (chain: %s)"
                         % (MAX_CHAIN_DEPTH, _chain_text(chain)),
                         chain=[image.path for image in chain], path=target)
    try:
        image = _open_layer(target, parent.backing_format or None, read_only, drivers,
                            locking, filename)
    except ImageLockError as err:
        # QEMU's words and hint; it opens backing files recursively, so each level
        # between the top and this file says it once more.
        raise ImageLockError("Could not open backing file: " * len(chain) + err.desc,
                             err.path) from err
    except ImageError as err:
        raise _backing_error(chain, name, _reason(err, target)) from err
    seen.add(identity)
    parent.backing = image
    return image


def _reason(err: ImageError, target: str) -> str:
    """The driver's message without a leading "Could not open 'target': " (we say it already)."""
    prefix = "Could not open '%s': " % target
    return err.desc[len(prefix):] if err.desc.startswith(prefix) else err.desc


def _backing_error(chain: List[BlockImage], name: str, reason: str) -> ChainError:
    return ChainError("Could not open backing file '%s' of %s: %s (chain: %s)"
                      % (name, chain[-1].path, reason, _chain_text(chain)),
                      chain=[image.path for image in chain], path=chain[-1].path)


def chain_of(top: BlockImage) -> List[BlockImage]:
    """[top, top.backing, top.backing.backing, ...] (stops at a repeated image)."""
    chain, seen = [], set()
    image = top
    while image is not None and id(image) not in seen:
        chain.append(image)
        seen.add(id(image))
        image = image.backing
    return chain


def close_chain(top: BlockImage) -> None:
    """Close every image of the chain; the first error is raised after all were tried."""
    failure = None
    for image in chain_of(top):
        try:
            image.close()
        except BlockError as err:
            failure = failure or err
    if failure is not None:
        raise failure


# -- block status over a chain ----------------------------------------------

class _Extent(NamedTuple):
    """One answer of the chain walk; ``present`` is QEMU's BDRV_BLOCK_ALLOCATED."""
    kind: str
    offset: int
    length: int
    depth: int
    host_offset: Optional[int]
    present: bool


def _layer_extents(chain, stop, depth, offset, end) -> Iterator[_Extent]:
    """Extents of [offset, end) as decided by chain[depth] and, where it says nothing, below."""
    for run in chain[depth].block_status(offset, end - offset):
        if run.kind == UNALLOCATED:
            yield from _fall_through(chain, stop, depth, run.offset, run.end)
        else:
            yield _Extent(run.kind, run.offset, run.length, depth, run.host_offset, True)


def _fall_through(chain, stop, depth, offset, end) -> Iterator[_Extent]:
    """[offset, end) is unallocated in chain[depth]: ask the layer below, up to ``stop``.

    Past the end of a shorter backing image the range reads as zero, decided (not
    allocated) by chain[depth], as QEMU's bdrv_co_block_status reports it.
    """
    below = depth + 1
    if below >= len(chain):
        yield _Extent(UNALLOCATED, offset, end - offset, depth, None, False)
        return
    split = max(offset, min(end, chain[below].virtual_size))
    if split > offset:
        if below == stop:
            yield _Extent(UNALLOCATED, offset, split - offset, depth, None, False)
        else:
            yield from _layer_extents(chain, stop, below, offset, split)
    if end > split:
        yield _Extent(ZERO, split, end - split, depth, None, False)


def _walk(top: BlockImage, base: Optional[BlockImage], offset: int, length: int):
    chain = chain_of(top)
    if base is None:
        stop = len(chain)
    else:
        stops = [index for index, image in enumerate(chain) if image is base]
        if not stops or stops[0] == 0:
            raise ImageError("'%s' is not below '%s' in its backing chain" % (base.path, top.path),
                             path=base.path)
        stop = stops[0]
    if offset < 0 or length < 0 or offset + length > top.virtual_size:
        raise ImageError("Range of %d bytes at offset %d is outside '%s' (size %d)"
                         % (length, offset, top.path, top.virtual_size),
                         path=top.path, value=offset)
    if length == 0:
        return iter(())
    return _layer_extents(chain, stop, 0, offset, offset + length)


def block_status_above(top: BlockImage, base: Optional[BlockImage], offset: int,
                       length: int) -> List[Run]:
    """Runs covering [offset, offset+length): which layer from ``top`` down to just above
    ``base`` (all layers when None) decides each byte, and how.

    ``depth`` indexes ``chain_of(top)``.  UNALLOCATED means no layer above ``base``
    allocates the range; its depth is the lowest layer examined.  ``host_offset`` is
    kept for DATA runs whose host bytes are contiguous.
    """
    runs: List[Run] = []
    with top.lock:
        for extent in _walk(top, base, offset, length):
            host = extent.host_offset if extent.kind == DATA else None
            last = runs[-1] if runs else None
            if last and (last.kind, last.depth) == (extent.kind, extent.depth):
                joined = (host if last.host_offset is not None and host is not None
                          and last.host_offset + last.length == host else None)
                runs[-1] = Run(last.kind, last.offset, last.length + extent.length,
                               last.host_offset if joined is not None else None, last.depth)
            else:
                runs.append(Run(extent.kind, extent.offset, extent.length, host, extent.depth))
    return runs


def extents_above(top: BlockImage, base: Optional[BlockImage], offset: int,
                  length: int) -> List[Run]:
    """As ``block_status_above`` but unmerged: one run per answer of a layer, so every
    DATA run stored plainly keeps its ``host_offset`` (merging drops it when two
    pieces of a layer are not contiguous on the host).  The stream plans copies
    from this."""
    with top.lock:
        return [Run(e.kind, e.offset, e.length, e.host_offset if e.kind == DATA else None,
                    e.depth) for e in _walk(top, base, offset, length)]


def _map_entry(chain: List[BlockImage], extent: _Extent) -> dict:
    entry = {"start": extent.offset, "length": extent.length, "depth": extent.depth,
             "present": extent.present, "zero": extent.kind != DATA,
             "data": extent.kind == DATA}
    if extent.present and chain[extent.depth].format_name == "raw":
        entry["offset"] = extent.offset        # a raw file maps one to one, holes included
    elif extent.host_offset is not None:
        entry["offset"] = extent.host_offset
    return entry


def _mergeable(previous: dict, entry: dict) -> bool:
    """QEMU's entry_mergeable: same flags and depth, offsets absent or contiguous."""
    if any(previous[key] != entry[key] for key in ("depth", "present", "zero", "data")):
        return False
    if ("offset" in previous) != ("offset" in entry):
        return False
    return "offset" not in entry or previous["offset"] + previous["length"] == entry["offset"]


def qemu_img_map(top: BlockImage, offset: int = 0, length: Optional[int] = None) -> List[dict]:
    """The chain's status shaped like ``qemu-img map --output=json`` entries."""
    if length is None:
        length = top.virtual_size - offset
    chain = chain_of(top)
    entries: List[dict] = []
    with top.lock:
        for extent in _walk(top, None, offset, length):
            entry = _map_entry(chain, extent)
            if entries and _mergeable(entries[-1], entry):
                entries[-1]["length"] += entry["length"]
            else:
                entries.append(entry)
    return entries
