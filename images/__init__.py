"""The block layer: qcow2 and raw images, backing chains, block status and block jobs.

Top level: what every layer shares (the driver interface, raw, chains and block
status, image locks, errors, events, the fault injector, dirty bitmaps and the
guest's write path that marks them).  ``images.qcow2``: the qcow2 format.
``images.jobs``: the block-job engine and one module per job kind.

Nothing here imports ``commands`` or ``monitor``; this package knows no terminal,
no socket and no command syntax.  ``images.qcow2`` imports nothing from
``images.jobs`` (tests/test_layering.py checks both).
"""
