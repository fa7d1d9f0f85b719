"""The kernel side's BPF: compile ``bpf/sockmap_conf.bpf.c`` and drive it through libbpf.

``clang -O2 -g -target bpf`` compiles the object once per process into a
temporary directory; :class:`BpfObject` loads a fresh copy per scenario (so no
map, program attachment or counter outlives its scenario) through
``libbpf.so.1`` called with ctypes: open, load, find programs and maps,
``bpf_prog_attach``, and the map syscalls the scenarios exercise. libbpf 1.x
returns ``-errno`` from these calls; :func:`errno_name` names them.

:func:`availability` says whether the live kernel side can run here, and if
not, why, in one line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import platform
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "ATTACH_TYPES",
    "MAP_INDEX",
    "BpfError",
    "BpfObject",
    "availability",
    "compile_object",
    "errno_name",
    "pack_msg_cfg",
    "pack_skb_cfg",
]

SOURCE = Path(__file__).parent / "bpf" / "sockmap_conf.bpf.c"

#: libbpf's attach types for the programs (``enum bpf_attach_type``).
ATTACH_TYPES = {
    "stream_parser": 4,
    "stream_verdict": 5,
    "msg_verdict": 7,
    "skb_verdict": 38,
}
#: the redirect map selector the programs read (``struct verdict.map``).
MAP_INDEX = {"map_a": 0, "map_b": 1, "map_c": 2, "hash_a": 3}
#: value sizes of the object's socket maps (8: lookups give cookies).
VALUE_SIZE = {"map_a": 8, "map_b": 8, "map_c": 8, "hash_a": 8, "map_v4": 4}

MAX_OPS = 6
LOG_RUNS = 64
OP_CODES = {"apply": 1, "cork": 2, "pull": 3, "push": 4, "pop": 5}
V_CODES = {"pass": 1, "drop": 2, "redirect": 3}
RET_CODES = {"helper": 0, "pass": 1, "drop": 2}
#: u32 words: ops (6 x 6), verdicts (2 x 6)
_MSG_CFG_WORDS = MAX_OPS * 6 + 2 * 6
_SKB_CFG_WORDS = 1 + 2 * 6
_LOG_ENT = struct.Struct("<II6iI")


class BpfError(OSError):
    """A libbpf call failed; ``errno`` is the kernel's."""


def errno_name(err: int) -> str:
    """``"ok"`` for 0, else the errno's symbolic name (``-22`` or ``22`` ⇒ ``"EINVAL"``)."""
    if err == 0:
        return "ok"
    if abs(err) == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"  # errorcode says ENOTSUP, the same number on Linux
    return errno.errorcode.get(abs(err), f"E{abs(err)}")


def _pack_verdict(v: dict[str, Any] | None) -> list[int]:
    if not v:
        return [0] * 6
    return [
        V_CODES[v["verdict"]],
        MAP_INDEX.get(v.get("map", "map_a"), 0),
        int(v.get("key", 0)),
        int(v.get("flags", 0)),
        RET_CODES[v.get("ret", "helper")],
        int(v.get("from_run", 0)),
    ]


def pack_msg_cfg(ops: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> bytes:
    """``struct msg_cfg`` from a scenario's (normalised) SK_MSG program description."""
    words: list[int] = []
    for i in range(MAX_OPS):
        if i < len(ops):
            op = ops[i]
            words += [
                OP_CODES[op["op"]],
                int(op.get("a", 0)) & 0xFFFFFFFF,
                int(op.get("b", 0)) & 0xFFFFFFFF,
                int(op.get("from_run", 0)),
                int(op.get("to_run", 0)),
                int(bool(op.get("drop_on_error", False))),
            ]
        else:
            words += [0] * 6
    for i in range(2):
        words += _pack_verdict(verdicts[i] if i < len(verdicts) else None)
    assert len(words) == _MSG_CFG_WORDS
    return struct.pack(f"<{len(words)}I", *words)


def pack_skb_cfg(parser_len: int, verdicts: list[dict[str, Any]]) -> bytes:
    """``struct skb_cfg``."""
    words = [parser_len]
    for i in range(2):
        words += _pack_verdict(verdicts[i] if i < len(verdicts) else None)
    return struct.pack(f"<{len(words)}I", *words)


# -- compiling ---------------------------------------------------------------------------------


@functools.cache
def compile_object() -> Path:
    """Compile the programs once per process; the object's path.

    Raises:
        BpfError: clang is missing or failed (its output in the message).
    """
    clang = shutil.which("clang")
    if clang is None:
        raise BpfError(errno.ENOENT, "clang is not installed")
    out_dir = Path(tempfile.mkdtemp(prefix="skmsg-conf-bpf-"))
    obj = out_dir / "sockmap_conf.bpf.o"
    cmd = [clang, "-O2", "-g", "-target", "bpf", "-mcpu=v3"]
    # linux/bpf.h needs asm/types.h, which lives under the multiarch include dir
    candidates = [Path(f"/usr/include/{platform.machine()}-linux-gnu")]
    candidates += sorted(Path("/usr/include").glob("*-linux-gnu"))
    for inc in candidates:
        if (inc / "asm" / "types.h").exists():
            cmd.append(f"-I{inc}")
            break
    cmd += ["-c", str(SOURCE), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BpfError(errno.EINVAL, f"clang failed: {proc.stderr.strip()[:2000]}")
    return obj


# -- libbpf ------------------------------------------------------------------------------------

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_QUIET = _PRINT_FN(lambda level, fmt, args: 0)


@functools.cache
def _libbpf() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    vp, cp, i, u = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, cp]),
        "bpf_program__fd": (i, [vp]),
        "bpf_object__find_map_fd_by_name": (i, [vp, cp]),
        "bpf_prog_attach": (i, [i, i, u, u]),
        "bpf_prog_detach2": (i, [i, i, u]),
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "libbpf_set_print": (vp, [_PRINT_FN]),
    }
    for fn, (res, args) in sigs.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    lib.libbpf_set_print(_QUIET)
    return lib


class BpfObject:
    """One loaded copy of the conformance object: its programs and maps.

    Raises (from the constructor):
        BpfError: libbpf could not open or load it (``errno`` says why; EPERM
            when not privileged).
    """

    def __init__(self, path: Path) -> None:
        self._lib = lib = _libbpf()
        ctypes.set_errno(0)
        obj = lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            raise BpfError(ctypes.get_errno() or errno.EINVAL, f"cannot open {path}")
        err = lib.bpf_object__load(obj)
        if err:
            lib.bpf_object__close(obj)
            raise BpfError(-err, f"cannot load {path.name}: {errno_name(err)}")
        self._obj: int | None = obj

    def prog_fd(self, name: str) -> int:
        prog = self._lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise KeyError(f"no program {name!r} in the object")
        return int(self._lib.bpf_program__fd(prog))

    def map_fd(self, name: str) -> int:
        fd = int(self._lib.bpf_object__find_map_fd_by_name(self._obj, name.encode()))
        if fd < 0:
            raise KeyError(f"no map {name!r} in the object")
        return fd

    def attach(self, prog: str, map_name: str, attach_type: str) -> int:
        """``bpf_prog_attach``; 0 or ``-errno``."""
        return int(
            self._lib.bpf_prog_attach(
                self.prog_fd(prog), self.map_fd(map_name), ATTACH_TYPES[attach_type], 0
            )
        )

    def detach(self, prog: str, map_name: str, attach_type: str) -> int:
        return int(
            self._lib.bpf_prog_detach2(
                self.prog_fd(prog), self.map_fd(map_name), ATTACH_TYPES[attach_type]
            )
        )

    def _key(self, map_name: str, key: int) -> ctypes.Array[ctypes.c_char]:
        return ctypes.create_string_buffer(struct.pack("<I", key & 0xFFFFFFFF), 4)

    def update(self, map_name: str, key: int, fd: int, flags: int) -> int:
        """``bpf_map_update_elem(map, &key, &fd, flags)``, value sized as the map's;
        0 or ``-errno``."""
        size = VALUE_SIZE[map_name]
        value = struct.pack(
            "<Q" if size == 8 else "<I", fd & (2**64 - 1 if size == 8 else 2**32 - 1)
        )
        buf = ctypes.create_string_buffer(value, size)
        return int(
            self._lib.bpf_map_update_elem(
                self.map_fd(map_name), self._key(map_name, key), buf, flags
            )
        )

    def delete(self, map_name: str, key: int) -> int:
        return int(self._lib.bpf_map_delete_elem(self.map_fd(map_name), self._key(map_name, key)))

    def lookup(self, map_name: str, key: int) -> tuple[int, int]:
        """``(0, cookie)`` or ``(-errno, 0)``."""
        size = VALUE_SIZE[map_name]
        buf = ctypes.create_string_buffer(max(size, 8))
        err = int(
            self._lib.bpf_map_lookup_elem(self.map_fd(map_name), self._key(map_name, key), buf)
        )
        if err:
            return err, 0
        return 0, int(struct.unpack_from("<Q" if size == 8 else "<I", buf.raw)[0])

    def set_array(self, map_name: str, index: int, value: bytes) -> None:
        buf = ctypes.create_string_buffer(value, len(value))
        err = self._lib.bpf_map_update_elem(
            self.map_fd(map_name), self._key(map_name, index), buf, 0
        )
        if err:
            raise BpfError(-err, f"cannot set {map_name}[{index}]: {errno_name(err)}")

    def get_array(self, map_name: str, index: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(size)
        err = self._lib.bpf_map_lookup_elem(self.map_fd(map_name), self._key(map_name, index), buf)
        if err:
            raise BpfError(-err, f"cannot read {map_name}[{index}]: {errno_name(err)}")
        return buf.raw

    def counter(self, index: int) -> int:
        return int(struct.unpack("<I", self.get_array("counters", index, 4))[0])

    def msg_log(self, runs: int) -> list[dict[str, Any]]:
        """The SK_MSG program's log of its first runs (at most ``LOG_RUNS``)."""
        out = []
        for run in range(min(runs, LOG_RUNS)):
            size_in, size_out, *rest = _LOG_ENT.unpack(
                self.get_array("msg_log", run, _LOG_ENT.size)
            )
            rets, verdict = rest[:MAX_OPS], rest[MAX_OPS]
            out.append({"size_in": size_in, "size_out": size_out, "rets": rets, "verdict": verdict})
        return out

    def skb_log(self, runs: int) -> list[int]:
        return [
            int(struct.unpack("<I", self.get_array("skb_log", run, 4))[0])
            for run in range(min(runs, LOG_RUNS))
        ]

    def close(self) -> None:
        if self._obj is not None:
            self._lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def availability() -> str | None:
    """``None`` when the live kernel side can run here, else one line saying why not."""
    if os.environ.get("SKMSG_CONFORMANCE", "").lower() == "recorded":
        return "SKMSG_CONFORMANCE=recorded"
    if os.geteuid() != 0:
        return "not root (BPF sockmap programs need CAP_BPF and CAP_NET_ADMIN)"
    try:
        _libbpf()
    except OSError as exc:
        return f"libbpf.so.1 not found ({exc})"
    try:
        path = compile_object()
    except BpfError as exc:
        return str(exc).splitlines()[0]
    try:
        with BpfObject(path) as obj:
            obj.map_fd("map_a")
    except BpfError as exc:
        return f"the kernel refused the BPF object ({exc})"
    return None
