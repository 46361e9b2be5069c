"""The device table: device names (virtio0, ide0-hd0, ...) onto image chains, node names onto images.

Every image of every chain has a node name, given by the user or derived from its
file name (``D.qcow2`` gives ``D``; ``D-1`` if taken), so the operator sees and types
the seed's notation ``[A] <- [B] <- [C] <- [D]``.  The table also records which
images a job holds ("busy"), since QEMU's op blockers live on nodes.
"""
import os
import threading

from images.chain import chain_of, open_image

from .block_backend import IoStats
from .errors import CommandError


def derived_node_name(path):
    stem = os.path.basename(path)
    for suffix in (".qcow2", ".qcow", ".img", ".raw"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "node-" + cleaned
    return cleaned


class Device:
    def __init__(self, name, top):
        self.name = name
        self.top = top          # the active image the guest writes to
        # Held for each guest request and for a switch of ``top``: a request that
        # picked the old top finishes before the switch, never after it.
        self.io_lock = threading.RLock()
        self.stats = IoStats()  # every guest request, whichever client sent it


class DeviceTable:
    def __init__(self):
        self._lock = threading.RLock()
        self._devices = {}      # name -> Device, in creation order
        self._nodes = {}        # node name -> image
        self._busy = {}         # id(image) -> job type that blocks it
        # Images open outside any device chain: nodes made by blockdev-add (the
        # monitor owns them) and the targets of running mirror jobs.
        self._owned = {}        # node name -> image, blockdev-add's nodes
        self._job_nodes = []    # images a job keeps open

    # -- building -------------------------------------------------------------
    def add_drive(self, device, path, format=None, node_name=None, read_only=False,
                  locking=True):
        with self._lock:
            if device in self._devices:
                raise CommandError("Duplicate ID '%s' for drive" % device)
            if node_name is not None and node_name in self._nodes:
                raise CommandError("Duplicate nodes with node-name='%s'" % node_name)
            # Lock errors name the file as typed, as QEMU's do.
            top = open_image(os.path.abspath(path), format=format, read_only=read_only,
                             locking=locking, filename=path)
            self.name_chain(top, node_name)
            self._devices[device] = Device(device, top)
            return top

    def name_chain(self, top, top_name=None):
        """Give every unnamed image in the chain a unique node name."""
        with self._lock:
            for depth, image in enumerate(chain_of(top)):
                if image.node_name is not None and self._nodes.get(image.node_name) is image:
                    continue
                wanted = top_name if (depth == 0 and top_name) else derived_node_name(image.path)
                image.node_name = self._unique(wanted)
                self._nodes[image.node_name] = image

    def _unique(self, wanted):
        name, n = wanted, 0
        while name in self._nodes:
            n += 1
            name = "%s-%d" % (wanted, n)
        return name

    def forget_unused_nodes(self):
        """Drop node names of images no device chain reaches any more."""
        with self._lock:
            live = {id(img) for img in self.all_images()}
            for name in [n for n, img in self._nodes.items() if id(img) not in live]:
                del self._nodes[name]

    @property
    def graph_lock(self):
        """Held by commands that change or depend on the shape of the graph (snapshot, stream start)."""
        return self._lock

    # -- lookups --------------------------------------------------------------
    def devices(self):
        with self._lock:
            return list(self._devices.values())

    def device(self, name):
        with self._lock:
            return self._devices.get(name)

    def node(self, name):
        with self._lock:
            return self._nodes.get(name)

    def node_names(self):
        with self._lock:
            return list(self._nodes)

    def lookup(self, device=None, node_name=None):
        """QEMU's bdrv_lookup_bs: a device's active image, else a node."""
        with self._lock:
            if device is not None and device in self._devices:
                return self._devices[device].top
            if node_name is not None and node_name in self._nodes:
                return self._nodes[node_name]
        raise CommandError("Cannot find device='%s' nor node-name='%s'" % (device or "", node_name or ""))

    def device_of(self, image):
        """The device whose active image is ``image``, or None."""
        with self._lock:
            for dev in self._devices.values():
                if dev.top is image:
                    return dev
        return None

    def all_images(self):
        """Every open image: device chains, then blockdev-add nodes and job targets (once each)."""
        with self._lock:
            roots = [dev.top for dev in self._devices.values()]
            roots += list(self._owned.values()) + self._job_nodes
            images, seen = [], set()
            for root in roots:
                for img in chain_of(root):
                    if id(img) not in seen:
                        seen.add(id(img))
                        images.append(img)
            return images

    # -- nodes outside device chains ----------------------------------------------
    def add_job_node(self, image, node_name=None):
        """Keep a job's image (a mirror target) open and named until release_job_node."""
        with self._lock:
            self._job_nodes.append(image)
            self.name_chain(image, node_name)

    def release_job_node(self, image):
        with self._lock:
            self._job_nodes = [img for img in self._job_nodes if img is not image]

    def add_owned_node(self, image, node_name):
        """A blockdev-add node: named ``node_name``, open until blockdev-del."""
        with self._lock:
            self._owned[node_name] = image
            self.name_chain(image, node_name)

    def owned_node(self, node_name):
        with self._lock:
            return self._owned.get(node_name)

    def remove_owned_node(self, node_name):
        with self._lock:
            image = self._owned.pop(node_name)
            self.close_unused([image])

    def close_unused(self, images):
        """Close the images (and their chains) that no open chain reaches, forget their names."""
        with self._lock:
            live = {id(img) for img in self.all_images()}
            for root in images:
                for img in chain_of(root):
                    if id(img) not in live:
                        img.close()
            self.forget_unused_nodes()

    def switch_top(self, device, new_top):
        with self._lock:
            device.top = new_top

    # -- op blockers ------------------------------------------------------------
    def check_not_busy(self, image):
        with self._lock:
            job_type = self._busy.get(id(image))
            if job_type is not None:
                raise CommandError("Node '%s' is busy: block device is in use by block job: %s"
                                   % (self.display_name(image), job_type))

    def is_busy(self, image):
        with self._lock:
            return id(image) in self._busy

    def display_name(self, image):
        dev = self.device_of(image)
        return dev.name if dev is not None else (image.node_name or image.path)

    def block(self, images, job_type):
        with self._lock:
            for image in images:
                self.check_not_busy(image)
            for image in images:
                self._busy[id(image)] = job_type

    def unblock(self, images):
        with self._lock:
            for image in images:
                self._busy.pop(id(image), None)

    def close_all(self):
        with self._lock:
            seen = set()
            for image in self.all_images():
                if id(image) not in seen:
                    seen.add(id(image))
                    image.close()
            self._devices.clear()
            self._nodes.clear()
            self._owned.clear()
            self._job_nodes = []
