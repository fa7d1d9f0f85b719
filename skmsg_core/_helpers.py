"""The SK_MSG helpers that work on the message (``net/core/filter.c``).

Each returns what the kernel's returns, 0 or a negative errno, because
programs check (or ignore) those values; none raises, whatever it is given
(the kernel's verifier would refuse a program passing bad types):

- an argument that is not an ``int`` (a ``bool`` neither), or out of the
  range the kernel's ``u32`` arguments allow, is ``-EINVAL``; but for a
  push's length, where only a negative one is ``-EINVAL``:
- a push that would make the message larger than :data:`MSG_SIZE_MAX`,
  however many bytes it asks for (``2**32 - 1``, ``2**32`` or ``2**62``
  alike), is ``-ENOMEM``, as the kernel's page allocation fails for it;
  nothing is allocated then.

Cost grows with the bytes a call touches, never with the message's size:
elements are split by adjusting offsets, and only ``msg_pull_data`` (or a full
ring) copies, and then only the elements involved.
"""

from __future__ import annotations

import errno

from ._consts import MSG_SIZE_MAX
from ._ring import Sge, SkMsg

__all__ = [
    "msg_apply_bytes",
    "msg_cork_bytes",
    "msg_pop_data",
    "msg_pull_data",
    "msg_push_data",
]

_U32 = 0xFFFFFFFF


def _u32_args(*values: object) -> bool:
    """Whether every value is an ``int`` (not a ``bool``) in the u32 range."""
    return all(type(v) is int and 0 <= v <= _U32 for v in values)


def msg_apply_bytes(msg: SkMsg, nbytes: int) -> int:
    """``bpf_msg_apply_bytes``: apply this run's verdict to the next ``nbytes``.

    The verdict then covers exactly ``nbytes`` bytes, across later sends if the
    message is shorter, and the program runs again after them. 0 means the
    whole message. Returns 0 (``nbytes`` is taken modulo 2**32, as the
    kernel's u32 argument), or ``-EINVAL`` when it is not an ``int``.
    """
    if type(nbytes) is not int:
        return -errno.EINVAL
    msg._apply = nbytes & _U32
    return 0


def msg_cork_bytes(msg: SkMsg, nbytes: int) -> int:
    """``bpf_msg_cork_bytes``: hold the message until it is ``nbytes`` long.

    Later sends append to the held message and the program runs again on the
    whole of it once ``nbytes`` have accumulated (or the ring is full). 0 means
    no cork. Returns 0 (``nbytes`` is taken modulo 2**32), or ``-EINVAL``
    when it is not an ``int``.
    """
    if type(nbytes) is not int:
        return -errno.EINVAL
    msg._cork = nbytes & _U32
    return 0


def _find(msg: SkMsg, start: int) -> tuple[int, int]:
    """Index of the element holding byte ``start`` and that element's message offset;
    ``(len(msg), size)`` when ``start`` is at or past the end."""
    offset = 0
    for i, e in enumerate(msg._elems):
        if start < offset + e.length:
            return i, offset
        offset += e.length
    return len(msg), offset


def msg_pull_data(msg: SkMsg, start: int, end: int, flags: int = 0) -> int:
    """``bpf_msg_pull_data``: make bytes ``[start, end)`` the program's ``data`` window.

    If the range lies in one element without the copy bit, nothing is copied;
    inside one file element (a send of a file), only the pages (4 KiB) that
    hold it are read, into a private element between what stays of the file
    element (when the ring has the slots); otherwise the whole elements from
    the one holding ``start`` to the one holding ``end - 1`` are copied into
    one private element (the only bytes copied). The message's bytes and size
    do not change.

    Returns 0, or ``-EINVAL`` for ``flags``, ``end <= start``, ``start >= size``,
    ``end > size``, or an argument that is not a u32 ``int``; ``-EIO`` when a
    file element's file shrank under the send.
    """
    if not _u32_args(start, end, flags) or flags or end <= start:
        return -errno.EINVAL
    i, offset = _find(msg, start)
    if i >= len(msg):
        return -errno.EINVAL
    elems = msg._elems
    nbytes = end - start
    span = start - offset + nbytes
    first = elems[i]
    if not first.copy and span <= first.length:
        msg.set_window(i, start - offset, nbytes)
        return 0
    if first.file is not None and span <= first.length:
        done = _pull_file_pages(msg, i, start - offset, nbytes)
        if done is not None:
            return done
    copied = 0
    j = i
    while j < len(elems):
        copied += elems[j].length
        j += 1
        if span <= copied:
            break
    if span > copied:
        return -errno.EINVAL
    try:
        page = bytearray().join([e.view() for e in elems[i:j]])
    except OSError as exc:  # a file element whose file shrank under the send
        return -(exc.errno or errno.EIO)
    elems[i:j] = [Sge(memoryview(page), 0, copied)]
    msg.set_window(i, start - offset, nbytes)
    return 0


#: A file element is pulled a page at a time, as the kernel's sendpage pages are.
_PAGE = 4096


def _pull_file_pages(msg: SkMsg, i: int, rel: int, nbytes: int) -> int | None:
    """Pull ``nbytes`` at ``rel`` of file element ``i``: read only the pages
    that hold them into a private element, the rest of the file element
    staying as file elements before and after it (what the kernel copies for
    a range inside its sendpage pages). None when the ring has no room for the
    split (the caller copies the whole element then)."""
    elems = msg._elems
    e = elems[i]
    assert e.file is not None
    base = e.file[1] + e.offset  # the file position of the element's first byte
    lo = rel - (base + rel) % _PAGE
    lo = max(lo, 0)
    hi = rel + nbytes
    hi = min(hi + (-(base + hi)) % _PAGE, e.length)
    pieces = (lo > 0) + 1 + (hi < e.length)
    if len(elems) - 1 + pieces > msg._max_frags:
        return None
    try:
        page = bytearray(e.slice(e.offset + lo, e.offset + hi))
    except OSError as exc:  # the file shrank under the send
        return -(exc.errno or errno.EIO)
    new = []
    if lo > 0:
        new.append(Sge(e.buf, e.offset, lo, True, e.file))
    new.append(Sge(memoryview(page), 0, hi - lo))
    if hi < e.length:
        new.append(Sge(e.buf, e.offset + hi, e.length - hi, True, e.file))
    elems[i : i + 1] = new
    msg.set_window(i + (lo > 0), rel - lo, nbytes)
    return 0


def msg_push_data(msg: SkMsg, start: int, length: int, flags: int = 0) -> int:
    """``bpf_msg_push_data``: insert ``length`` new bytes before byte ``start``.

    ``start == size`` appends (the 2024 kernel fix). The new bytes are zero-filled
    (the kernel leaves them unspecified; zeros make results deterministic). The
    element holding ``start`` is split, using one free ring slot at an element
    boundary and two inside one; without them that element and the new bytes are
    copied into one new element. The ``data`` window is reset to the first element.

    Returns 0, ``-EINVAL`` for ``flags``, ``start > size``, a ``start`` or
    ``flags`` that is not a u32 ``int`` or a ``length`` that is not an ``int``
    or is negative, or ``-ENOMEM`` when the message would grow past
    :data:`MSG_SIZE_MAX`, however large ``length`` is (nothing is allocated).
    """
    if not _u32_args(start, flags) or flags or type(length) is not int or length < 0:
        return -errno.EINVAL
    if length == 0:
        return 0
    if start > msg._size:
        return -errno.EINVAL
    if msg._size + length > MSG_SIZE_MAX:
        return -errno.ENOMEM
    elems = msg._elems
    i, offset = _find(msg, start)
    space = msg._max_frags - len(elems)
    inside = start != offset  # start falls inside element i (or at the very end)
    if i >= len(elems) and elems:
        # Appending: the "element holding start" is the last one, start is its end.
        i -= 1
        offset -= elems[i].length
        inside = True
    if elems and (space == 0 or (space == 1 and inside)):
        # Not enough slots: copy element i with the new bytes into one element.
        e = elems[i]
        cut = e.offset + start - offset
        try:
            page = bytearray().join(
                (e.slice(e.offset, cut), bytes(length), e.slice(cut, e.offset + e.length))
            )
        except OSError as exc:  # a file element whose file shrank under the send
            return -(exc.errno or errno.EIO)
        elems[i] = Sge(memoryview(page), 0, len(page))
    else:
        new = Sge(memoryview(bytearray(length)), 0, length)
        if not elems:
            elems.append(new)
        elif not inside:
            elems.insert(i, new)
        else:
            e = elems[i]
            front = start - offset
            if front == e.length:
                elems.insert(i + 1, new)
            else:
                rest = Sge(e.buf, e.offset + front, e.length - front, e.copy, e.file)
                e.length = front
                elems[i + 1 : i + 1] = [new, rest]
    msg._size += length
    msg.compute_data_pointers()
    return 0


def msg_pop_data(msg: SkMsg, start: int, length: int, flags: int = 0) -> int:
    """``bpf_msg_pop_data``: remove bytes ``[start, start + length)``.

    Popping through the last byte, even the whole message, is allowed (the 2024
    kernel fix). A cut inside one element with bytes left on both sides splits it
    (one free slot), or copies the two remaining parts into one new element when
    the ring is full. The ``data`` window is reset to the first element.

    Returns 0, or ``-EINVAL`` for ``flags``, ``start >= size``,
    ``start + length > size`` or an argument that is not a u32 ``int``.
    """
    if not _u32_args(start, length, flags) or flags:
        return -errno.EINVAL
    if length == 0:
        return 0
    elems = msg._elems
    i, offset = _find(msg, start)
    if i >= len(elems) or start + length > msg._size:
        return -errno.EINVAL
    space = msg._max_frags - len(elems)
    pop = length
    if start != offset:
        e = elems[i]
        a = start - offset
        b = e.length - pop - a
        if b > 0:
            if space:
                tail = Sge(e.buf, e.offset + a + pop, b, e.copy, e.file)
                e.length = a
                elems.insert(i + 1, tail)
            else:
                try:
                    page = bytearray().join(
                        (
                            e.slice(e.offset, e.offset + a),
                            e.slice(e.offset + a + pop, e.offset + e.length),
                        )
                    )
                except OSError as exc:  # a file element whose file shrank
                    return -(exc.errno or errno.EIO)
                elems[i] = Sge(memoryview(page), 0, a + b)
            pop = 0
        else:
            pop -= e.length - a
            e.length = a
        i += 1
    while pop:
        e = elems[i]
        if pop < e.length:
            e.offset += pop
            e.length -= pop
            pop = 0
        else:
            pop -= e.length
            del elems[i]
    msg._size -= length
    msg.compute_data_pointers()
    return 0
