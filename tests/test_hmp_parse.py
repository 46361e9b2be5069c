"""The HMP argument parser: sizes (qemu_strtosz_MiB), flags, quoting and exact error texts."""
import pytest
from hypothesis import given, settings, strategies as st

from commands.args import (INT64_MAX, Cursor, ParseError, compile_args, parse_arguments,
                           parse_seconds, parse_size)
from commands.completion import argument_at

MiB = 1 << 20


# Every size the transcript feeds to block_job_set_speed, with the limit QEMU then showed.
@pytest.mark.parametrize("word, value", [
    ("10", 10 * MiB), ("1k", 1024), ("1K", 1024), ("512", 512 * MiB), ("1.5M", 1572864),
    ("100B", 100), ("4096B", 4096), ("1G", 1 << 30), ("0x10", 16 * MiB), ("0", 0),
    ("10M", 10485760),
])
def test_transcript_sizes(word, value):
    assert parse_arguments("block_job_set_speed", "device:B,speed:o", "virtio0 " + word) == {
        "device": "virtio0", "speed": value}


@pytest.mark.parametrize("word, value", [
    ("1b", 1), ("2t", 2 << 40), ("1P", 1 << 50), ("7E", 7 << 60), ("1.", MiB),
    ("1.k", 1024), ("0.5", MiB // 2), ("1.0B", 1), ("+3", 3 * MiB), ("0X1f", 31 * MiB),
    ("1.5k", 1536), ("0.0009765625K", 1),
])
def test_more_sizes(word, value):
    assert parse_size(word) == value


@pytest.mark.parametrize("word", [
    "abc", "-1", "-0", "", "1.5B", "1.5e3", "1e3", "0x", "0x10M", "0x1.5", "10Mfoo", "1KB",
    "1 K", ".5", "1Z", "99999999999999999999", "16E", "0x10000000000000000",
])
def test_bad_sizes(word):
    with pytest.raises(ValueError):
        parse_size(word)


@pytest.mark.parametrize("word", ["abc", "-1", "8E", "9223372036854775808B", "1.5B", "\"10\""])
def test_bad_size_argument_says_invalid_size(word):
    with pytest.raises(ParseError) as err:
        parse_arguments("block_job_set_speed", "device:B,speed:o", "virtio0 " + word)
    assert err.value.message == "invalid size"


def test_largest_size_is_int64_max():
    assert parse_arguments("x", "speed:o", "9223372036854775807B") == {"speed": INT64_MAX}


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_byte_counts_round_trip(n):
    assert parse_size("%dB" % n) == n
    assert parse_size("%dk" % (n >> 10)) == (n >> 10) << 10


def test_missing_size_is_invalid_size():
    with pytest.raises(ParseError) as err:
        parse_arguments("block_job_set_speed", "device:B,speed:o", "virtio0")
    assert err.value.message == "invalid size"


# -- block_stream: speed and base, and our base-as-second-word improvement ----------------
STREAM = "device:B,speed:o?,base:s?"
FALLBACK = {"speed": "base"}


@pytest.mark.parametrize("text, expected", [
    ("virtio0", {"device": "virtio0"}),
    ("virtio0 10M", {"device": "virtio0", "speed": 10 * MiB}),
    ("virtio0 0 B.qcow2", {"device": "virtio0", "speed": 0, "base": "B.qcow2"}),
    ("virtio0 0 /images/s1/D.qcow2", {"device": "virtio0", "speed": 0, "base": "/images/s1/D.qcow2"}),
    ("virtio0 A", {"device": "virtio0", "base": "A"}),
    ("virtio0 A.qcow2", {"device": "virtio0", "base": "A.qcow2"}),
    ("virtio0 ../s3/B.qcow2", {"device": "virtio0", "base": "../s3/B.qcow2"}),
    ("virtio0 #block535", {"device": "virtio0", "base": "#block535"}),
    ('virtio0 "10"', {"device": "virtio0", "base": "10"}),
    ("  virtio0\t 1K   ", {"device": "virtio0", "speed": 1024}),
])
def test_block_stream_arguments(text, expected):
    assert parse_arguments("block_stream", STREAM, text, FALLBACK) == expected


@pytest.mark.parametrize("text, message", [
    ("", "block_stream: block device name expected"),
    ("virtio0 -1", "invalid size"),
    ("virtio0 10x", "invalid size"),
    ("virtio0 A 10M", "block_stream: extraneous characters at the end of line"),
    ("virtio0 0 A B", "block_stream: extraneous characters at the end of line"),
])
def test_block_stream_errors(text, message):
    with pytest.raises(ParseError) as err:
        parse_arguments("block_stream", STREAM, text, FALLBACK)
    assert err.value.message == message


def test_without_fallback_a_base_word_is_an_invalid_size():
    with pytest.raises(ParseError) as err:
        parse_arguments("block_stream", STREAM, "virtio0 A.qcow2")
    assert err.value.message == "invalid size"


# -- flags ---------------------------------------------------------------------------------
SNAP = "reuse:-n,device:B,snapshot-file:s?,format:s?"


@pytest.mark.parametrize("text, expected", [
    ("virtio0", {"device": "virtio0"}),
    ("-n virtio0 f.qcow2", {"reuse": True, "device": "virtio0", "snapshot-file": "f.qcow2"}),
    # QEMU reads each flag once: the second -n is the device name.
    ("-n -n virtio0", {"reuse": True, "device": "-n", "snapshot-file": "virtio0"}),
    ("virtio0 /new-path/disk.img qcow2",
     {"device": "virtio0", "snapshot-file": "/new-path/disk.img", "format": "qcow2"}),
])
def test_snapshot_flags(text, expected):
    assert parse_arguments("snapshot_blkdev", SNAP, text) == expected


def test_flag_cluster_and_unknown_flag():
    assert parse_arguments("block", "nodes:-n,verbose:-v,device:B?", "-nv") == {
        "nodes": True, "verbose": True}
    with pytest.raises(ParseError) as err:
        parse_arguments("block_job_cancel", "force:-f,device:B", "-x virtio0")
    assert err.value.message == "block_job_cancel: unsupported option -x"
    with pytest.raises(ParseError) as err:
        parse_arguments("block_job_cancel", "force:-f,device:B", "-fz virtio0")
    assert err.value.message == "block_job_cancel: unsupported option -z"


def test_flags_after_positionals_are_extraneous():
    with pytest.raises(ParseError) as err:
        parse_arguments("block_job_cancel", "force:-f,device:B", "virtio0 -f")
    assert err.value.message == "block_job_cancel: extraneous characters at the end of line"


def test_without_flags_a_dash_word_is_a_device():
    assert parse_arguments("block_stream", STREAM, "-1", FALLBACK) == {"device": "-1"}


# -- strings and quoting -------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ('virtio0 "read -P 0xab 0 64k"', "read -P 0xab 0 64k"),
    (r'virtio0 "a\"b\\c\'d"', "a\"b\\c'd"),
    (r'virtio0 "x\ny\r"', "x\ny\r"),
    ('virtio0 ""', ""),
    ("virtio0 map", "map"),
])
def test_quoted_strings(text, expected):
    args = parse_arguments("qemu-io", "qdev:-d,device:B,command:s", text)
    assert args["command"] == expected


@pytest.mark.parametrize("text, message", [
    ('virtio0 "read 0 1', "qemu-io: unterminated string"),
    ('virtio0 read"', 'qemu-io: unbalanced quote in read"'),
    ('virtio0 "map"x', 'qemu-io: unbalanced quote in "x'),
    (r'virtio0 "\q"', "qemu-io: unsupported escape code: '\\q'"),
    ("virtio0", "qemu-io: string expected"),
    ("", "qemu-io: block device name expected"),
    ("virtio0 read 0 1", "qemu-io: extraneous characters at the end of line"),
])
def test_string_errors(text, message):
    with pytest.raises(ParseError) as err:
        parse_arguments("qemu-io", "qdev:-d,device:B,command:s", text)
    assert err.value.message == message


def test_rest_of_line_and_seconds():
    assert parse_arguments("help", "name:S?", "  info  block ") == {"name": "info  block"}
    assert parse_arguments("help", "name:S?", "") == {}
    assert parse_seconds("1.5") == 1.5 and parse_seconds("250ms") == 0.25
    with pytest.raises(ParseError) as err:
        parse_arguments("sleep", "seconds:T", "soon")
    assert err.value.message == "sleep: invalid number 'soon'"
    with pytest.raises(ParseError) as err:
        parse_arguments("sleep", "seconds:T", "")
    assert err.value.message == "sleep: number expected"


def test_compile_args_is_cached_and_rejects_unknown_letters():
    assert compile_args(STREAM) is compile_args(STREAM)
    assert [(s.name, s.kind.letter, s.optional) for s in compile_args(STREAM)] == [
        ("device", "B", False), ("speed", "o", True), ("base", "s", True)]
    with pytest.raises(ValueError):
        compile_args("x:Q")


def test_cursor_words():
    cursor = Cursor('  a "b c"  d')
    assert cursor.read_word("t") == ("a", False)
    assert cursor.read_word("t") == ("b c", True)
    assert cursor.rest() == "d" and cursor.at_end()


def test_argument_at_for_completion():
    assert argument_at(STREAM, "")[0].name == "device"
    assert argument_at(STREAM, "vir") == (compile_args(STREAM)[0], "vir")
    assert argument_at(STREAM, "virtio0 ")[0].name == "speed"
    assert argument_at(STREAM, "virtio0 0 B")[0].name == "base"
    assert argument_at(STREAM, "virtio0 0 B x")[0] is None
    spec, prefix = argument_at(SNAP, "-n vir")
    assert spec.name == "device" and prefix == "vir"
    assert argument_at(SNAP, "-")[0].is_flag
