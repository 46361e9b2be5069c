"""The block layer: qcow2 and raw images, backing chains, block status and block jobs.

Nothing here imports ``commands`` or ``monitor``; this package knows no terminal,
no socket and no command syntax.
"""
