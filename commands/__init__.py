"""The QMP-shaped command core, the one command table, and HMP parsing.

Imports ``images``; never ``monitor``, prompt_toolkit or rich.
"""
