"""``struct sk_msg``: a scatter-gather ring of memoryview fragments.

Theory of operation
-------------------
A message is an ordered run of *elements* (``struct scatterlist`` entries),
each a ``(buffer, offset, length)`` window on a buffer, held in a ring of
``max_frags + 1`` slots of which at most ``max_frags`` are used
(``MAX_MSG_FRAGS``; one slot always stays free, as in the kernel). ``start``
is the ring slot of the first element and ``end`` one past the last; the
kernel's ``sk_msg_elem_used`` is ``len(msg)`` here.

Elements move with their *copy bit* (``sg.copy``): an element whose buffer is
borrowed from the sender (zero-copy, sendpage) has it set, and a program
cannot see its bytes until ``msg_pull_data`` copies them into a private
buffer. (The kernel keeps the copy bitmap per ring slot and does not move it
when push/pop shift elements; we move it with the element, which is what the
bitmap means.)

Filling from a send copies the caller's bytes into the socket's
:class:`PageFrag`, the kernel's ``sk_page_frag``: 32 KiB chunks carved
contiguously, so consecutive small writes, corked ones included, coalesce into
one element. A buffer handed to :meth:`SkMsg.append_borrowed` is referenced,
not copied, and carries the copy bit.

The program sees ``data``, a window on one element: the first one unless a
pull chose another range (``sk_msg_compute_data_pointers``). ``data`` is
writable where the element's buffer is (private chunks are), and writes land
in the bytes that are sent, as BPF direct packet writes do.

No helper copies bytes it does not have to: pull copies the elements it
linearises, push and pop split elements by adjusting offsets, and only a full
ring makes them copy the one element they touch.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ._consts import FRAG_SIZE, MAX_MSG_FRAGS
from ._sock import SkFields

if TYPE_CHECKING:
    from ._sock import Sock

__all__ = ["FileSpan", "PageFrag", "SkMsg", "Sge", "pread_exactly"]

_EMPTY = memoryview(b"")
_U32_MAX = 0xFFFFFFFF


def _u32_field(name: str, value: object) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) in the u32 range.

    Raises:
        TypeError: it is not an ``int``.
        ValueError: it is outside 0 .. 2**32 - 1.
    """
    if type(value) is not int:
        if type(value) is bool or not isinstance(value, int):
            raise TypeError(f"SkMsg.{name} takes an int, not {type(value).__name__}")
        value = int.__int__(value)
    if not 0 <= value <= _U32_MAX:
        raise ValueError(f"SkMsg.{name} must be a u32, not {value}")
    return value


class Sge:
    """One scatterlist element: ``length`` bytes at ``offset`` of ``buf``.

    A *file element* (``file`` set: ``(fd, position)``, the file position of
    ``buf``'s byte 0) holds bytes of a file a send handed over (sendpage),
    read only when something asks for them (:meth:`slice`); its ``buf`` is an
    empty placeholder. It always carries the copy bit.
    """

    __slots__ = ("buf", "copy", "file", "length", "offset")

    def __init__(
        self,
        buf: memoryview,
        offset: int,
        length: int,
        copy: bool = False,
        file: tuple[int, int] | None = None,
    ) -> None:
        self.buf = buf
        self.offset = offset
        self.length = length
        self.copy = copy
        self.file = file

    def slice(self, start: int, end: int) -> memoryview:
        """Bytes ``start``..``end`` of the buffer (element offsets, not relative
        to ``offset``): a view of memory, or the file's bytes read now.

        Raises:
            OSError(EIO): a file element's file is shorter than it was.
        """
        file = self.file
        if file is None:
            return self.buf[start:end]
        return memoryview(pread_exactly(file[0], end - start, file[1] + start))

    def view(self) -> memoryview:
        """The element's bytes (without copying, but a file element's)."""
        return self.slice(self.offset, self.offset + self.length)

    def clone(self) -> Sge:
        return Sge(self.buf, self.offset, self.length, self.copy, self.file)

    def __repr__(self) -> str:
        kind = f", file={self.file}" if self.file is not None else ""
        return f"Sge(offset={self.offset}, length={self.length}, copy={self.copy}{kind})"


def pread_exactly(fd: int, n: int, position: int) -> bytes:
    """``n`` bytes of file ``fd`` at ``position``.

    Raises:
        OSError(EIO): the file ends before them (it shrank under a send).
        OSError: what ``pread`` raises.
    """
    out = os.pread(fd, n, position)
    while len(out) < n:
        more = os.pread(fd, n - len(out), position + len(out))
        if not more:
            raise OSError(
                errno.EIO, f"file fd {fd} ends at {position + len(out)}, before the "
                f"{n} bytes at {position} a send handed over"
            )
        out += more
    return out


class FileSpan:
    """Bytes of a file an action hands on (a file element consumed):
    ``nbytes`` of file ``fd`` at ``offset``, for the I/O layer to send with
    ``sendfile(2)``; :meth:`view` reads them when a target needs memory."""

    __slots__ = ("fd", "nbytes", "offset")

    def __init__(self, fd: int, offset: int, nbytes: int) -> None:
        self.fd = fd
        self.offset = offset
        self.nbytes = nbytes

    def view(self) -> memoryview:
        """The bytes, read now.

        Raises:
            OSError(EIO): the file is shorter than it was.
        """
        return memoryview(pread_exactly(self.fd, self.nbytes, self.offset))

    def __repr__(self) -> str:
        return f"FileSpan(fd={self.fd}, offset={self.offset}, nbytes={self.nbytes})"


class PageFrag:
    """``sk_page_frag``: private 32 KiB chunks handed out contiguously.

    One per socket. :meth:`alloc` returns ``(chunk, offset, n)`` with ``n`` at
    most what is left in the current chunk, starting a new chunk when it is full.
    """

    __slots__ = ("chunk", "size", "used")

    def __init__(self, size: int = FRAG_SIZE) -> None:
        self.size = size
        self.chunk = memoryview(bytearray(size))
        self.used = 0

    def alloc(self, want: int) -> tuple[memoryview, int, int]:
        if self.used >= self.size:
            self.chunk = memoryview(bytearray(self.size))
            self.used = 0
        off = self.used
        n = min(want, self.size - off)
        self.used = off + n
        return self.chunk, off, n


class SkMsg(SkFields):
    """``struct sk_msg``: the message a SK_MSG program sees (``sk_msg_md``).

    Fields a program reads: ``data`` (a memoryview window), ``data_off`` and
    ``data_end`` (the window's message offsets), ``size``, and through ``sk``
    the socket's ``family``, ``local_ip4``/``remote_ip4``, ``local_ip6``/
    ``remote_ip6``, ``local_port``/``remote_port`` (both in host byte order: a
    deliberate difference, Python has no use for a network-order port).

    Fields the helpers write: ``apply_bytes``, ``cork_bytes`` (which accept
    only a u32), ``flags`` and ``sk_redir`` (read-only: only the redirect
    helpers set them). Like the kernel's, they live in the message and are not
    cleared between runs of a program on the same message. ``size``,
    ``start`` and ``max_frags`` are read-only: the engines' own.

    Writes only during the run: ``data`` is the one writable view a program
    gets (``frags()``, ``elements()``, ``sole_frag()`` are read-only), and
    when the run ends (:meth:`end_run`, which every engine calls) the bytes
    it exposed are moved to a buffer of the message's own, so a view the
    program kept, written later, changes nothing that is sent.
    """

    __slots__ = (
        "_apply",
        "_borrowed",
        "_cork",
        "_elems",
        "_exposed",
        "_flags",
        "_helper_error",
        "_lent_win",
        "_max_frags",
        "_redir",
        "_size",
        "_start",
        "_win",
        "sk",
    )

    def __init__(self, max_frags: int = MAX_MSG_FRAGS, sk: Sock | None = None) -> None:
        if max_frags < 1:
            raise ValueError(f"max_frags must be at least 1, not {max_frags}")
        self._max_frags = max_frags
        self._elems: list[Sge] = []
        self._start = 0
        self._size = 0
        self._apply = 0
        self._cork = 0
        self._flags = 0
        self.sk = sk
        self._redir: Sock | None = None
        # buffers a writable ``data`` view was taken of during this run
        self._exposed: list[memoryview] | None = None
        # a helper's note of the program's mistake, for the runner to count
        self._helper_error: str | None = None
        # The data window: (element index, offset in element, length), or None.
        self._win: tuple[int, int, int] | None = None
        # reset_lazy's sender view, until the bytes are copied (materialize)
        self._borrowed: memoryview | None = None
        # the window reset_lazy set: while _win is this very tuple, no helper
        # has reshaped the message (each one sets a new window or none)
        self._lent_win: tuple[int, int, int] | None = None

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        max_frags: int = MAX_MSG_FRAGS,
        frag_size: int = FRAG_SIZE,
    ) -> SkMsg:
        """A message holding a private copy of ``data``, as one send fills it.

        Raises:
            ValueError: ``data`` does not fit in ``max_frags`` chunks of ``frag_size``.
        """
        msg = cls(max_frags)
        nbytes = memoryview(data).nbytes
        taken = msg.append_copy(PageFrag(frag_size), (data,))
        if taken != nbytes:
            raise ValueError(f"{nbytes} bytes do not fit in {max_frags} frags of {frag_size}")
        msg.compute_data_pointers()
        return msg

    @classmethod
    def from_frags(
        cls, frags: Iterable[bytes | bytearray | memoryview], *, copy: bool = False,
        max_frags: int = MAX_MSG_FRAGS,
    ) -> SkMsg:
        """A message whose elements are exactly ``frags``, referenced without a copy.

        With ``copy=True`` every element carries the copy bit (borrowed pages).

        Raises:
            ValueError: more than ``max_frags`` fragments, or an empty one.
        """
        msg = cls(max_frags)
        for frag in frags:
            view = memoryview(frag).cast("B")
            if not view.nbytes:
                raise ValueError("an sk_msg element cannot be empty")
            if msg.full:
                raise ValueError(f"more than {max_frags} fragments")
            msg._elems.append(Sge(view, 0, view.nbytes, copy))
            msg._size += view.nbytes
        msg.compute_data_pointers()
        return msg

    @classmethod
    def of_private(cls, buf: bytearray, *, max_frags: int = MAX_MSG_FRAGS) -> SkMsg:
        """A message whose one element is ``buf``, a private buffer the caller
        just copied a send's bytes into (no copy bit; the window shows it).
        The fast form of :meth:`from_frags` for one fresh buffer (the TLS
        record engine builds one per record).

        Raises:
            ValueError: ``buf`` is empty.
        """
        n = len(buf)
        if not n:
            raise ValueError("an sk_msg element cannot be empty")
        msg = cls(max_frags)
        msg._elems.append(Sge(memoryview(buf), 0, n))
        msg._size = n
        msg._win = (0, 0, n)
        return msg

    def reset_private(self, buf: bytearray) -> None:
        """Make this message what :meth:`of_private` would make of ``buf``: its
        one element is ``buf`` (private, no copy bit), the window shows it,
        ``start`` is 0 and the helpers' fields (``apply_bytes``, ``cork_bytes``,
        ``flags``, ``sk_redir``) are cleared; ``max_frags`` and ``sk`` stay.

        For an engine that verdicts one record after another: a message whose
        bytes were handed on is reused for the next, instead of a new message
        and element per record. Views taken of the old bytes stay valid (they
        are the old buffer's).

        Raises:
            ValueError: ``buf`` is empty; the message is unchanged.
        """
        n = len(buf)
        if not n:
            raise ValueError("an sk_msg element cannot be empty")
        elems = self._elems
        if len(elems) == 1:
            e = elems[0]
            e.buf = memoryview(buf)
            e.offset = 0
            e.length = n
            e.copy = False
        else:
            self._elems = [Sge(memoryview(buf), 0, n)]
        self._start = 0
        self._size = n
        self._win = (0, 0, n)
        self._borrowed = None
        if self._apply or self._cork or self._flags:
            self._apply = self._cork = self._flags = 0
        if self._redir is not None:
            self._redir = None

    def reset_lazy(self, view: memoryview) -> None:
        """As :meth:`reset_private` of a copy of ``view`` (a one-dimensional
        byte view), but the copy is made only when it is needed: when the
        program's window (:attr:`data`) is first asked for, or at
        :meth:`materialize`. Until then the element refers to ``view``, so its
        bytes, :meth:`frags` included, are the sender's own.

        For an engine whose record is most often passed without the program
        looking at its bytes: then no private copy is made at all. The caller
        promises ``view`` does not change while the message refers to it, and
        calls :meth:`materialize` before the message may outlive the send.
        Helpers never write into an element's buffer, and the elements they
        split keep its buffer object, so a later copy finds them all.

        Raises:
            ValueError: ``view`` is empty; the message is unchanged.
        """
        n = view.nbytes
        if not n:
            raise ValueError("an sk_msg element cannot be empty")
        elems = self._elems
        if len(elems) == 1:
            e = elems[0]
            e.buf = view
            e.offset = 0
            e.length = n
            e.copy = False
        else:
            self._elems = [Sge(view, 0, n)]
        self._start = 0
        self._size = n
        self._win = self._lent_win = (0, 0, n)
        self._borrowed = view
        if self._apply or self._cork or self._flags:
            self._apply = self._cork = self._flags = 0
        if self._redir is not None:
            self._redir = None

    def lent_bytes(self) -> memoryview:
        """The message's bytes as they stand, copied only where they must be:
        the very view :meth:`reset_lazy` (or :meth:`relend`) lent while the
        program has left the message as lent (its window not asked for, no
        helper reshaping it); else :meth:`sole_frag`'s view; else the
        elements joined into a new buffer."""
        lent = self._borrowed
        if lent is not None and self._win is self._lent_win:
            return lent
        view = self.sole_frag()
        return view if view is not None else memoryview(self.tobytes())

    def relend(self, view: memoryview) -> memoryview:
        """:meth:`lent_bytes`, then :meth:`reset_lazy` of ``view``, in one step.

        For an engine that verdicts one record after another from a sender's
        buffer: the record just passed is handed on and the next one lent. In
        the bulk case, a message the program left as lent with its helper
        fields clear, only the lent buffer changes (and the length, if it
        differs).

        Raises:
            ValueError: ``view`` is empty; the message is unchanged.
        """
        lent = self._borrowed
        n = view.nbytes
        if (
            lent is not None
            and n
            and self._win is self._lent_win
            and not (self._apply or self._cork or self._flags)
            and self._redir is None
        ):  # reset_lazy's state but for the buffer: no helper changed it since
            e = self._elems[0]
            e.buf = self._borrowed = view
            if n != e.length:
                e.length = self._size = n
                self._win = self._lent_win = (0, 0, n)
            return lent
        old = self.lent_bytes()
        self.reset_lazy(view)
        return old

    def materialize(self) -> None:
        """Give the message its own copy of the bytes :meth:`reset_lazy` left
        with the sender (every element still referring to them); a no-op
        otherwise."""
        base = self._borrowed
        if base is None:
            return
        self._borrowed = None
        own = memoryview(bytearray(base))
        for e in self._elems:
            if e.buf is base:
                e.buf = own

    # -- fields ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes in the message (``sg.size``)."""
        return self._size

    @property
    def start(self) -> int:
        """Ring slot of the first element (``sg.start``)."""
        return self._start

    @property
    def max_frags(self) -> int:
        """Elements the ring can hold."""
        return self._max_frags

    @property
    def flags(self) -> int:
        """The redirect helper's flags (``BPF_F_INGRESS``); set by the helpers only."""
        return self._flags

    @property
    def sk_redir(self) -> Sock | None:
        """The redirect target the helpers recorded; set by the helpers only."""
        return self._redir

    @property
    def apply_bytes(self) -> int:
        """The apply window ``msg_apply_bytes`` set (0: the whole message)."""
        return self._apply

    @apply_bytes.setter
    def apply_bytes(self, nbytes: int) -> None:
        self._apply = _u32_field("apply_bytes", nbytes)

    @property
    def cork_bytes(self) -> int:
        """The cork ``msg_cork_bytes`` set (0: none)."""
        return self._cork

    @cork_bytes.setter
    def cork_bytes(self, nbytes: int) -> None:
        self._cork = _u32_field("cork_bytes", nbytes)

    def end_run(self) -> None:
        """A program run on this message ended: every element whose buffer it
        was given a writable ``data`` view of gets a copy of its own, so the
        view, kept and written after the run, no longer reaches bytes that
        will be sent. Costs nothing when the run took no writable view."""
        exposed = self._exposed
        if exposed is None:
            return
        self._exposed = None
        for e in self._elems:
            buf = e.buf
            for b in exposed:
                if buf is b:
                    e.buf = memoryview(bytearray(buf[e.offset : e.offset + e.length]))
                    e.offset = 0
                    break

    # -- the ring -----------------------------------------------------------------------

    @property
    def end(self) -> int:
        """Ring slot one past the last element (``sg.end``)."""
        return (self._start + len(self._elems)) % (self._max_frags + 1)

    @property
    def full(self) -> bool:
        """``sk_msg_full``: every usable slot holds an element."""
        return len(self._elems) >= self._max_frags

    def __len__(self) -> int:
        """``sk_msg_elem_used``: how many elements the ring holds."""
        return len(self._elems)

    def elements(self) -> Sequence[Sge]:
        """The elements in order, first at ``start``: copies whose buffers are
        read-only (the message's own elements are the engines' and helpers')."""
        return tuple(
            Sge(e.buf.toreadonly(), e.offset, e.length, e.copy, e.file) for e in self._elems
        )

    def frags(self) -> list[memoryview]:
        """The message's bytes as read-only memoryviews, one per element, without
        copying (a file element's bytes are read now).

        Raises:
            OSError(EIO): a file element's file is shorter than it was.
        """
        return [e.view().toreadonly() for e in self._elems]

    def sole_frag(self) -> memoryview | None:
        """The message's bytes as one read-only memoryview, without copying,
        when it has exactly one element; None otherwise (several, or none)."""
        elems = self._elems
        if len(elems) != 1:
            return None
        e = elems[0]
        buf = e.buf
        if not e.offset and e.length == buf.nbytes and e.file is None:
            # the whole buffer (a record reset_lazy lent): no slice
            return buf if buf.readonly else buf.toreadonly()
        return e.view().toreadonly()

    def tobytes(self) -> bytes:
        """A copy of the whole message (for tests and slow paths)."""
        return b"".join(self.frags())

    def sg_copy(self, i: int) -> bool:
        """The copy bit of element ``i`` (0 is the first element)."""
        return self._elems[i].copy

    # -- filling --------------------------------------------------------------------

    def append_copy(
        self, frag: PageFrag, buffers: Sequence[bytes | bytearray | memoryview], limit: int = -1
    ) -> int:
        """Copy ``buffers`` (an iovec) onto the end, at most ``limit`` bytes (-1: all).

        ``sk_msg_alloc`` + ``sk_msg_memcopy_from_iter``: bytes go into ``frag``,
        coalescing with the last element when it ends where the new bytes start;
        iovec boundaries are not kept. Stops when the ring is full; returns the
        number of bytes taken (fewer than offered means the ring filled: the
        kernel's internal ``-ENOSPC``).
        """
        left = -1 if limit < 0 else limit
        taken = 0
        for buf in buffers:
            if not left:
                break
            src = buf if type(buf) is memoryview else memoryview(buf)
            if src.format != "B" or src.ndim != 1:
                src = src.cast("B")
            want = src.nbytes if left < 0 else min(left, src.nbytes)
            got = self._copy_in(frag, src, want)
            taken += got
            if left > 0:
                left -= got
            if got < want:  # the ring is full
                break
        return taken

    def append_file(self, fd: int, position: int, nbytes: int) -> int:
        """Reference ``nbytes`` of file ``fd`` at ``position`` as one new file
        element with the copy bit set (``tcp_bpf_sendpage``'s page): nothing is
        read; a program sees the bytes only once it pulls them.

        Returns the bytes taken: ``nbytes``, or 0 if the ring is full or
        ``nbytes`` is 0.
        """
        if self.full or nbytes <= 0:
            return 0
        self._elems.append(Sge(_EMPTY, 0, nbytes, True, (fd, position)))
        self._size += nbytes
        return nbytes

    def _copy_in(self, frag: PageFrag, src: memoryview, total: int) -> int:
        """Copy the first ``total`` bytes of ``src`` into ``frag``'s chunks and
        onto the end; returns how many were taken (fewer: the ring is full)."""
        taken = 0
        elems = self._elems
        while taken < total:
            chunk, off, n = frag.alloc(total - taken)
            chunk[off : off + n] = src[taken : taken + n]
            last = elems[-1] if elems else None
            if (
                last is not None
                and last.buf is chunk
                and not last.copy
                and last.offset + last.length == off
            ):
                last.length += n
            elif len(elems) >= self._max_frags:
                frag.used = off  # give the bytes back
                break
            else:
                elems.append(Sge(chunk, off, n))
            taken += n
            self._size += n
        return taken

    def append_borrowed(self, buf: bytes | bytearray | memoryview) -> int:
        """Reference ``buf`` as one new element with the copy bit set (sendpage).

        Returns the bytes taken: ``len(buf)``, or 0 if the ring is full or
        ``buf`` is empty.
        """
        view = memoryview(buf).cast("B")
        if self.full or not view.nbytes:
            return 0
        self._elems.append(Sge(view, 0, view.nbytes, True))
        self._size += view.nbytes
        return view.nbytes

    # -- consuming -------------------------------------------------------------------

    def consume(self, n: int) -> list[memoryview]:
        """Take the first ``n`` bytes off the front, returned as memoryviews
        (a file element's bytes are read now).

        The ring's ``start`` advances past whole elements; a partly taken element
        is trimmed (``sk_msg_free_partial``). ``n`` larger than ``size`` takes all.

        Raises:
            ValueError: ``n`` is negative.
            OSError(EIO): a file element's file is shorter than it was (the
                bytes are taken all the same).
        """
        out: list[memoryview] = []
        for e, start, end in self._take(n):
            out.append(e.buf[start:end] if e.file is None else e.slice(start, end))
        return out

    def consume_spans(self, n: int) -> list[memoryview | FileSpan]:
        """:meth:`consume`, with a file element's bytes as :class:`FileSpan`
        values for the I/O layer to send from the file (``sendfile(2)``),
        never read into memory.

        Raises:
            ValueError: ``n`` is negative.
        """
        out: list[memoryview | FileSpan] = []
        for e, start, end in self._take(n):
            file = e.file
            if file is None:
                out.append(e.buf[start:end])
            else:
                out.append(FileSpan(file[0], file[1] + start, end - start))
        return out

    def _take(self, n: int) -> list[tuple[Sge, int, int]]:
        """Take the first ``n`` bytes off the front: ``(element, start, end)``
        of each piece taken, in buffer offsets."""
        if n < 0:
            raise ValueError(f"cannot consume a negative number of bytes ({n})")
        out: list[tuple[Sge, int, int]] = []
        elems = self._elems
        take = min(n, self._size)
        self._size -= take
        k = 0
        while take:
            e = elems[k]
            if e.length <= take:
                out.append((e, e.offset, e.offset + e.length))
                take -= e.length
                k += 1
            else:
                out.append((e, e.offset, e.offset + take))
                e.offset += take
                e.length -= take
                take = 0
        if k:
            del elems[:k]
            self._start = (self._start + k) % (self._max_frags + 1)
        self._win = None
        return out

    def free(self) -> int:
        """``sk_msg_free``: drop every element and re-initialise the message; return
        how many bytes were dropped.

        As the kernel's ``__sk_msg_free`` ends with ``sk_msg_init``, the helpers'
        fields (``apply_bytes``, ``cork_bytes``, ``flags``, ``sk_redir``) are
        cleared too: a corked message that a DROP emptied does not cork again
        on its old ``cork_bytes`` when later sends append to it.
        """
        n = self._size
        self._take(n)  # dropped unread
        self._apply = self._cork = self._flags = 0
        self._redir = None
        self._borrowed = None
        return n

    # -- the program's window ----------------------------------------------------------

    def compute_data_pointers(self) -> None:
        """``sk_msg_compute_data_pointers``: the window becomes the first element,
        or empty when that element carries the copy bit (or there is none)."""
        if self._elems and not self._elems[0].copy:
            self._win = (0, 0, self._elems[0].length)
        else:
            self._win = None

    def set_window(self, index: int, offset: int, length: int) -> None:
        """Point the window at ``length`` bytes from ``offset`` of element ``index``."""
        self._win = (index, offset, length)

    @property
    def data(self) -> memoryview:
        """The bytes the program may look at (``data`` .. ``data_end``), writable
        where the message's buffer is, until the run ends (:meth:`end_run`)."""
        if self._borrowed is not None:
            self.materialize()  # what the program sees is the message's own
        win = self._win
        if win is None:
            return _EMPTY
        i, off, n = win
        e = self._elems[i]
        start = e.offset + off
        buf = e.buf
        if not buf.readonly:
            exposed = self._exposed
            if exposed is None:
                self._exposed = [buf]
            elif not any(b is buf for b in exposed):
                exposed.append(buf)
        return buf[start : start + n]

    @property
    def data_off(self) -> int:
        """Message offset of ``data[0]`` (0 when the window is empty)."""
        win = self._win
        if win is None:
            return 0
        i, off, _ = win
        return sum(e.length for e in self._elems[:i]) + off

    @property
    def data_end(self) -> int:
        """Message offset one past the window's last byte."""
        win = self._win
        return 0 if win is None else self.data_off + win[2]

    def __repr__(self) -> str:
        return (
            f"<SkMsg size={self._size} elems={len(self._elems)} start={self._start} "
            f"end={self.end} apply={self._apply} cork={self._cork}>"
        )
