"""QMP ``query-block`` and the per-layer block map: facts about devices, shaped as QEMU shapes them."""
from images.chain import chain_of

from .bitmaps import dirty_bitmaps_info


def image_info(image):
    """ImageInfo: qemu-img-info facts for one image and, recursively, its backing images."""
    facts = image.info()
    info = {
        "filename": image.path,
        "format": image.format_name,
        "virtual-size": image.virtual_size,
        "actual-size": facts.get("actual-size", 0),
        "dirty-flag": bool(facts.get("dirty-flag", False)),
    }
    if image.format_name == "qcow2":
        info["cluster-size"] = image.cluster_size
    if facts.get("format-specific"):
        info["format-specific"] = {"type": image.format_name, "data": facts["format-specific"]}
    if image.backing_name:
        info["backing-filename"] = image.backing_name
        info["full-backing-filename"] = image.backing.path if image.backing else image.backing_name
        if image.backing_format:
            info["backing-filename-format"] = image.backing_format
    if image.backing is not None:
        info["backing-image"] = image_info(image.backing)
    return info


def inserted_info(top):
    """BlockDeviceInfo for a device's active image."""
    depth = len(chain_of(top)) - 1
    inserted = {
        "file": top.path,
        "node-name": top.node_name,
        "ro": bool(top.read_only),
        "drv": top.format_name,
        "backing_file_depth": depth,
        "encrypted": False,
        "detect_zeroes": "off",
        "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "write_threshold": 0,
        "cache": {"writeback": True, "direct": False, "no-flush": False},
        "image": image_info(top),
    }
    if top.backing_name:
        inserted["backing_file"] = top.backing_name
    if len(top.dirty_bitmaps):      # QEMU 7.2 lists them here, only when there are some
        inserted["dirty-bitmaps"] = dirty_bitmaps_info(top)
    return inserted


def device_info(device):
    """BlockInfo as QEMU 7.2 gives a drive with no guest device attached (the transcript):
    ``removable`` is true, and ``qdev`` and ``io-status`` are absent (QEMU sets io-status
    only once a guest device enables it; a job's own io-status is in query-block-jobs)."""
    return {
        "device": device.name,
        "locked": False,
        "removable": True,
        "type": "unknown",
        "inserted": inserted_info(device.top),
    }


def block_map(top):
    """Per layer, top first: node name, file name, virtual size and its own runs."""
    layers = []
    for image in chain_of(top):
        runs = image.block_status(0, image.virtual_size) if image.virtual_size else []
        layers.append({
            "node-name": image.node_name,
            "filename": image.path,
            "format": image.format_name,
            "virtual-size": image.virtual_size,
            "runs": [[run.kind, run.offset, run.length] for run in runs],
        })
    return layers
