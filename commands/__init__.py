"""The QMP-shaped command core, the one command table, HMP parsing, completion and
rendering, and the qemu-io guest path.

Imports ``images``; never ``monitor``, prompt_toolkit or rich.
"""
