"""QMP argument checking against the command table entries' schemas, with QAPI's texts.

Order follows QEMU's input visitor: members in schema order (missing, wrong type,
bad enum value), then leftovers (``Parameter 'x' is unexpected``).  A string
holding a NUL is refused (we do better than QEMU, which would cut it there).  Nothing is
converted or defaulted; the handler sees the arguments as given.
"""
from typing import Optional

from .args import INT64_MAX
from .errors import COMMAND_NOT_FOUND, CommandError
from .table import ENUMS, find_qmp_command

INT64_MIN = -INT64_MAX - 1
_TYPE_WORDS = {"str": "string", "int": "integer", "bool": "boolean", "object": "object"}


def schema_of(name: str) -> dict:
    """The schema of QMP command ``name``; CommandNotFound if there is none."""
    command = find_qmp_command(name)
    if command is None:
        raise CommandError("The command %s has not been found" % name, COMMAND_NOT_FOUND)
    return command.schema


def validate_arguments(name: str, arguments: Optional[dict]) -> None:
    """Raise CommandError (GenericError) unless ``arguments`` fit command ``name``'s schema."""
    schema = schema_of(name)
    arguments = arguments or {}
    for key, type_ in schema.items():
        member = key.lstrip("*")
        if member not in arguments:
            if not key.startswith("*"):
                raise CommandError("Parameter '%s' is missing" % member)
            continue
        check_value(member, type_, arguments[member])
    known = {key.lstrip("*") for key in schema}
    for member in arguments:
        if member not in known:
            raise CommandError("Parameter '%s' is unexpected" % member)


def check_value(member: str, type_, value) -> None:
    """One member against its type: str, int (int64), bool, an enum name, or [type]."""
    if isinstance(type_, list):
        if not isinstance(value, list):
            raise _type_error(member, "array")
        for item in value:
            check_value(member, type_[0], item)
        return
    if type_ == "any":        # an alternate (e.g. BlockDirtyBitmapOrStr): the handler checks it
        return
    if type_ in ENUMS:
        if not isinstance(value, str):
            raise _type_error(member, "string")
        if value not in ENUMS[type_]:
            raise CommandError("Parameter '%s' does not accept value '%s'" % (member, value))
        return
    if type_ == "str":
        ok = isinstance(value, str)
    elif type_ == "bool":
        ok = isinstance(value, bool)
    elif type_ == "object":
        ok = isinstance(value, dict)
    elif type_ == "int":
        ok = (isinstance(value, int) and not isinstance(value, bool)
              and INT64_MIN <= value <= INT64_MAX)
    else:
        raise ValueError("unknown schema type %r for %r" % (type_, member))
    if not ok:
        raise _type_error(member, _TYPE_WORDS[type_])
    if type_ == "str" and "\0" in value:
        # Names and paths end at a NUL in C: QEMU would act on a prefix of the value
        # (or store the NUL in an image header).  Refuse it whole instead.
        raise CommandError("Parameter '%s' must not contain a NUL character" % member)


def _type_error(member: str, expected: str) -> CommandError:
    return CommandError("Invalid parameter type for '%s', expected: %s" % (member, expected))
