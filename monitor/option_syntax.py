"""QEMU's ``key=value,...`` option syntax, shared by ``-drive`` and the chardev specs.

QEMU's QemuOpts rules (util/qemu-option.c): options are separated by single
commas, ``,,`` is a literal comma inside a value, and a boolean value is read
by ``qapi_bool_parse`` (qapi/qapi-util.c), which takes ``on``/``yes``/``true``/``y``
and ``off``/``no``/``false``/``n``.  Every boolean option of blockmon's command
line is read through ``parse_bool`` here, so all of them accept the same words.
"""
from typing import List, Optional, Tuple

TRUE_WORDS = ("on", "yes", "true", "y")
FALSE_WORDS = ("off", "no", "false", "n")


def split_commas(text: str) -> List[str]:
    """Split on single commas; ``,,`` is an escaped comma (QEMU's QemuOpts rule)."""
    parts, current, i = [], [], 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def split_key_value(item: str) -> Tuple[str, Optional[str]]:
    """``key=value`` -> (key, value); a bare ``key`` -> (key, None)."""
    key, sep, value = item.partition("=")
    return key, (value if sep else None)


def parse_bool(value: str) -> Optional[bool]:
    """QEMU's boolean spellings -> True/False; None for anything else."""
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    return None
