"""The qcow2 format: header and extensions (``format``), L1/L2 tables (``tables``),
refcounts (``refcount``), the write paths (``writer``, ``batch``), metadata-overlap
checks (``overlap``) and the image class that ties them to one file (``image``).

Nothing here imports ``images.jobs``: the format knows no job.
"""
from .image import Qcow2Image, create_qcow2

__all__ = ["Qcow2Image", "create_qcow2"]
