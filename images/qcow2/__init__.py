"""The qcow2 format: header and extensions (``format``), L1/L2 tables (``tables``),
refcounts (``refcount``), the write paths (``writer``, ``batch``), metadata-overlap
checks (``overlap``), persistent dirty bitmaps (``bitmap_format``, ``bitmaps``) and the
image class that ties them to one file (``image``).

Nothing here imports ``images.jobs``: the format knows no job.  ``Qcow2Image`` and
``create_qcow2`` are loaded on first use, so that probing a file for the magic
(``format.QCOW2_MAGIC``) or opening a raw-only chain does not load the whole format.
"""
__all__ = ["Qcow2Image", "create_qcow2"]


def __getattr__(name):
    if name in __all__:
        from . import image   # pylint: disable=import-outside-toplevel
        return getattr(image, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
