"""The ``skmsg`` command line: arguments, output, signals, exit codes.

The one place of ``skmsg`` that writes to the terminal: what the
proxy listens on and the demo's replies to stdout; counters, warnings and
errors to stderr. Exit codes: 0 done (Ctrl-C is a normal way to stop), 1 the
demo missed replies, 2 a bad command line, policy file, address or backend
(one line on stderr naming it, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import math
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NoReturn

import trio

import skmsg_core as sk

from ._demo import run_demo
from ._events import EventFormatter
from ._metrics import start_metrics
from ._parsers import DEFAULT_MAX_MESSAGE, FRAMINGS
from ._proxy import MIN_MESSAGE_LIMIT, Address, Proxy, ProxyConfig, ProxyError, _why, run_proxy
from ._stats import format_table
from ._tls import add_tls_arguments, tls_options
from ._udp_proxy import UdpProxy, UdpProxyConfig, run_udp_demo, run_udp_proxy, udp_config
from ._workers import WorkerLink, add_worker_arguments, run_supervisor, run_worker

__all__ = ["build_parser", "main"]

DEFAULT_LISTEN = "127.0.0.1:7000"
DEFAULT_STATS_INTERVAL = 2.0
#: The longest timeout the command takes, in seconds (a day).
MAX_TIMEOUT = 86400.0
#: The largest --max-message-size (1 GiB).
MAX_MESSAGE_LIMIT = 1 << 30

PROXY_DESCRIPTION = """\
A message-based L7 proxy and load balancer, built the way the kernel's sockmap
proxy is: each client's receive pump frames its stream into messages (the
stream parser), runs a verdict program on each (the policy), and redirects the
message out of the chosen backend connection; each backend connection's own
verdict redirects its replies to its client. A client's connection to a
backend is made when its first message is routed there; a backend that fails
is marked down for a back-off and its messages go to the others (see "load
balancing, health and timeouts" below).

With no --backend it starts two embedded echo backends on 127.0.0.1 that
answer each message with itself, tagged with the backend's name, so
`skmsg proxy` alone is a working demo; `skmsg proxy --demo` also sends a few
messages through it, prints the replies and exits."""

PROXY_EPILOG = """\
parsers (--parser):
""" + "".join(
    textwrap.fill(f.help, 78, initial_indent=f"  {name:16} ", subsequent_indent=" " * 19,
                  break_on_hyphens=False) + "\n"
    for name, f in FRAMINGS.items()
) + """
policy file (--policy FILE): a Python file that defines
  verdict(skb, backends) -> int   required; run once per client message.
      skb.data, skb.len: the message (a read-only memoryview); skb.sk: the
      client's socket (skb.remote_ip4, skb.remote_port, ...). backends: a
      SockMap of this client's backend connections, index i = the i-th
      --backend (each connected when first used); backends.up(i) is False
      while backend i is down (in its back-off after a failure). Pick one
      with skmsg_core.sk_redirect_map(skb, backends, i, 0) and return its
      result (SK_PASS), or return SK_DROP. A message whose backend is down or
      fails before it is written is judged again; one no backend takes
      closes its client (HTTP: a 503 first). SK_PASS with no redirect
      delivers the message to the proxy, which counts it as "pass" and
      discards it. A verdict that raises (anything, sys.exit() too), returns
      anything but SK_PASS or SK_DROP (an int; logged with its type), or
      runs longer than --policy-budget drops the message and counts an error;
      the proxy and its other clients carry on.
  READS = N                       optional; the message's first N bytes are
      all the verdict reads: skb.data holds those only (skb.len is the
      whole length), and the rest of a message of 64 KiB or more goes from
      the client to its backend with splice(2), never copied into Python
      (plain TCP backends). A read past them drops the message, counted as
      a policy error. Without it the verdict may read every byte; the
      default policy reads none.
  parse(skb) -> int               optional; replaces --parser: the length of
      the next message in skb.data, 0 to wait for more bytes, or -errno. A
      parse that raises, returns no length or errno, or runs longer than
      --policy-budget closes that client.
  Both are checked when the file is loaded: plain functions of the right
  arguments (no async, no generators) that read skb.data as what it is.
  Reading the bytes: skb.data is a memoryview, not bytes. Search and order a
  copy of it:
      if b"FORBIDDEN" in bytes(skb.data): return SK_DROP
      if bytes(skb.data[4:5]) < b"m": ...
      n = int.from_bytes(skb.data[:4], "big")
  skb.data[i], len(skb.data) and skb.data[:3] == b"GET" work on the view.
  `in` on the view compares single elements and never finds b"FORBIDDEN";
  <, >, .startswith(), .find() and the like raise on it. Such uses are
  refused when the file is loaded, naming the line and what to write.
  Example: examples/route.py; more in docs/policies.md.
  Default policy: round-robin over the backends that are up, pass all.

load balancing, health and timeouts (all in docs/proxy.md):
  A backend is marked down when a connect to it fails or times out, a
  connection to it breaks, a reply it owes or a write it does not read times
  out, or an active check fails; it stays down for a back-off (1s, doubling
  up to 30s), then the next message routed to it tries again, and a
  connection that works marks it up. A message not yet written when its
  backend failed is judged again; a client whose message was written to a
  connection that then ended without a reply is closed at once. Every
  connection ends in bounded time: --connect-timeout, --handshake-timeout,
  --idle-timeout, --write-timeout. Clients are accepted in batches, and only
  while file descriptors remain for them and a backend connection each (the
  others wait in the listen backlog: one line says so, at most every 10s).

counters: messages, bytes, and pass/drop/redirect in all and per backend, on
stderr every --stats-interval seconds (default: every 2s when stdout and
stderr are terminals, else only at exit). Ctrl-C (SIGINT) or SIGTERM stops
the proxy: connections close, the final counters are printed, exit status 0.
SIGHUP reloads the --policy file: connected clients' next messages are judged
by the new policy; a file that fails to load or verify (or changes parse) is
refused, the running policy kept, and the log line says why.
Log lines on stderr are one event per line, key=value (ts=... level=...
event=client_closed client=... reason=...); -v adds each connection's life.
--metrics HOST:PORT serves Prometheus metrics; names in docs/proxy.md.
Bad arguments, a policy file that fails to load, a taken --listen address or
no --backend that can be reached exit with status 2 and a one-line error (a
--backend that cannot be reached while another can starts down, with a
warning).

examples:
  skmsg proxy --demo
  skmsg proxy --listen 127.0.0.1:7000 --backend 127.0.0.1:9001 \\
      --backend 127.0.0.1:9002 --parser length-prefixed --policy route.py"""


class _Parser(argparse.ArgumentParser):
    """argparse, with errors on one line (and no usage block above them)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: The loggers whose lines ``skmsg proxy`` writes to stderr: its own first.
_LOGGERS = ("skmsg", "skmsg_core", "skmsg_tcp", "skmsg_tls", "skmsg_udp")

def _listen_address(text: str) -> Address:
    try:
        return Address.parse(text, listen=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _backend_address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds > 0 and <= {MAX_TIMEOUT:g}"
        )
    return value


_SIZE_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
               "g": 1 << 30, "gib": 1 << 30}


def _size(text: str) -> int:
    number = text.rstrip("KMGkmgiIbB")
    unit = text[len(number):].lower()
    scale = _SIZE_UNITS.get(unit)
    if scale is None or not number.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in bytes (a number, optionally with K or M)"
        )
    value = int(number) * scale
    if not MIN_MESSAGE_LIMIT <= value <= MAX_MESSAGE_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not between {MIN_MESSAGE_LIMIT} bytes and "
            f"{MAX_MESSAGE_LIMIT >> 20} MiB"
        )
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The ``skmsg`` argument parser, with its ``proxy`` command."""
    parser = _Parser(
        prog="skmsg",
        description="skmsg: the Linux sk_msg / sockmap / kTLS programming model in user "
        "space, on trio.",
        epilog="Run `skmsg proxy --help` for the proxy; `skmsg proxy --demo` for a demo.",
    )
    parser.add_argument("--version", action="version", version=f"skmsg {sk.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    proxy = commands.add_parser(
        "proxy",
        help="a message-based L7 proxy and load balancer on socket maps",
        description=PROXY_DESCRIPTION,
        epilog=PROXY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    proxy.add_argument(
        "--listen", metavar="HOST:PORT", type=_listen_address, default=None,
        help=f"where clients connect (default {DEFAULT_LISTEN}; with --demo, a free port "
        "on 127.0.0.1); port 0 picks a free port; the bound address is printed",
    )
    proxy.add_argument(
        "--backend", metavar="HOST:PORT", type=_backend_address, action="append", default=[],
        help="a backend, index 0, 1, ... in the order given (repeat for more); none: two "
        "embedded echo backends",
    )
    proxy.add_argument(
        "--parser", choices=list(FRAMINGS), default="length-prefixed",
        help="how client streams are framed into messages (default length-prefixed)",
    )
    proxy.add_argument(
        "--policy", metavar="FILE", default=None,
        help="a Python policy file: verdict(skb, backends), optionally parse(skb) "
        "(default: round-robin, pass all)",
    )
    proxy.add_argument(
        "--stats-interval", metavar="SECONDS", type=_seconds, default=None,
        help="print the counters to stderr every SECONDS (0: only at exit; default 2 "
        "when stdout and stderr are terminals, else 0)",
    )
    proxy.add_argument(
        "--policy-budget", metavar="SECONDS", type=_budget, default=sk.DEFAULT_BUDGET,
        help="the longest one run of the policy's verdict or parse (and of the proxy's "
        "own programs) may last: a longer run is interrupted, its message dropped and "
        "counted as an error, so a slow policy cannot stall other clients (default "
        f"{sk.DEFAULT_BUDGET:g})",
    )
    proxy.add_argument(
        "--max-clients", metavar="N", type=_positive, default=1024,
        help="clients served at once (the clients map's max_entries; default 1024)",
    )
    proxy.add_argument(
        "--demo", action="store_true",
        help="also run a demo client: send a few messages, print the replies, exit",
    )
    proxy.add_argument(
        "--udp", action="store_true",
        help="proxy UDP datagrams instead of TCP streams: each datagram is one message "
        "(no --parser), replies go back to the client that sent it; a client's session "
        "ends after 30s without a datagram",
    )
    add_worker_arguments(proxy)
    add_tls_arguments(proxy)
    _add_lb_arguments(proxy)
    seeing = proxy.add_argument_group(
        "observability",
        "what an operator sees: counters on stderr (--stats-interval), log lines on stderr "
        "(one event per line, key=value), and Prometheus metrics over HTTP",
    )
    seeing.add_argument(
        "--metrics", metavar="HOST:PORT", type=_listen_address, default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks a free "
        "port; the address is printed); see docs/proxy.md for the names",
    )
    seeing.add_argument(
        "-v", "--verbose", action="store_true",
        help="log each connection's life: accepted, backends connected, closed with its "
        "reason and byte counts (default: warnings only)",
    )
    return parser


def _add_lb_arguments(proxy: argparse.ArgumentParser) -> None:
    """``skmsg proxy``'s load-balancing options: health, timeouts, limits."""
    group = proxy.add_argument_group(
        "load balancing, health and timeouts (TCP and TLS; see docs/proxy.md)"
    )
    group.add_argument(
        "--connect-timeout", metavar="SECONDS", type=_timeout, default=5.0,
        help="the longest a backend connect may take; a connect that takes longer "
        "marks the backend down (default 5)",
    )
    group.add_argument(
        "--handshake-timeout", metavar="SECONDS", type=_timeout, default=10.0,
        help="the longest a TLS handshake may take, from a client (--tls) or to a "
        "backend (--backend-tls) (default 10)",
    )
    group.add_argument(
        "--idle-timeout", metavar="SECONDS", type=_timeout, default=300.0,
        help="close a client connection that moves no byte for this long, and a "
        "backend connection too; a backend that owes a reply for this long has "
        "timed out: it is marked down and its client closed (default 300)",
    )
    group.add_argument(
        "--write-timeout", metavar="SECONDS", type=_timeout, default=30.0,
        help="close a peer, client or backend, that reads nothing for this long while "
        "the proxy has bytes for it (default 30)",
    )
    group.add_argument(
        "--health-interval", metavar="SECONDS", type=_timeout, default=None,
        help="also check every backend actively this often: a TCP connect (a TLS "
        "handshake with --backend-tls); default: passive health only",
    )
    group.add_argument(
        "--max-message-size", metavar="BYTES", type=_size, default=DEFAULT_MAX_MESSAGE,
        help="the longest message a client may send, whatever the framing (K and M "
        "suffixes work); an HTTP client gets 413 Payload Too Large, any other is "
        f"closed (default {DEFAULT_MAX_MESSAGE >> 20}M)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``skmsg`` command with ``argv`` (default ``sys.argv[1:]``); return
    its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.worker_channel is not None:
        return run_worker(args, _proxy_command)
    if args.workers == 1 and args.worker_select != "hash":
        _tell("skmsg proxy: error: --worker-select picks among workers: add --workers N "
              "(0: one per CPU)")
        return 2
    if args.workers != 1:
        listen = args.listen or Address.parse(DEFAULT_LISTEN, listen=True)
        raw = list(sys.argv[1:] if argv is None else argv)
        return run_supervisor(args, raw, listen, _tell, _say)
    return _proxy_command(args)


def _say(line: str) -> None:
    print(line, flush=True)


def _tell(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _proxy_command(args: argparse.Namespace, worker: WorkerLink | None = None) -> int:
    listen = args.listen or Address.parse("127.0.0.1:0" if args.demo else DEFAULT_LISTEN,
                                          listen=True)
    if args.udp and (args.tls or args.backend_tls):
        _tell("skmsg proxy: error: --tls/--backend-tls need TCP; --udp relays datagrams as is")
        return 2
    try:
        tls = tls_options(args, listen.host, have_backends=bool(args.backend))
    except ValueError as exc:
        _tell(f"skmsg proxy: error: {exc}")
        return 2
    config: ProxyConfig | UdpProxyConfig = ProxyConfig(
        listen=listen,
        backends=tuple(args.backend),
        parser=args.parser,
        policy=args.policy,
        max_clients=args.max_clients,
        tls=tls,
        policy_budget=args.policy_budget,
        reuseport=worker is not None,
        select_cpus=worker.select_cpus if worker is not None else (),
        connect_timeout=args.connect_timeout,
        handshake_timeout=args.handshake_timeout,
        idle_timeout=args.idle_timeout,
        write_timeout=args.write_timeout,
        health_interval=args.health_interval,
        max_message_size=args.max_message_size,
    )
    if args.udp:
        config = udp_config(args, listen)
    interval = args.stats_interval
    if interval is None:
        interval = DEFAULT_STATS_INTERVAL if sys.stdout.isatty() and sys.stderr.isatty() else 0.0
    # the proxy's lines and the runtime's (a program's or a socket's error) alike
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter())
    # the layers below log under their own names; this application under "skmsg"
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.WARNING)
    loggers[0].setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return trio.run(_run, config, interval, args.demo, args.metrics, worker)
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


async def _run(config: ProxyConfig | UdpProxyConfig, interval: float, demo: bool,
               metrics: Address | None = None, worker: WorkerLink | None = None) -> int:
    status = 0
    proxy: Proxy | UdpProxy | None = None
    metrics_at: Address | None = None
    udp = isinstance(config, UdpProxyConfig)
    running: list[Proxy | UdpProxy] = []  # for SIGHUP, once it runs
    with contextlib.ExitStack() as stack, trio.open_signal_receiver(
        signal.SIGINT, signal.SIGTERM, signal.SIGHUP
    ) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, signals, nursery.cancel_scope, running)
            try:
                proxy = await nursery.start(run_udp_proxy if udp else run_proxy, config)
                running.append(proxy)
                if metrics is not None:
                    metrics_at = await nursery.start(_serve_metrics, proxy, metrics)
            except ProxyError as exc:
                _tell(f"skmsg proxy: error: {exc}")
                status = 2
                nursery.cancel_scope.cancel()
            else:
                stack.callback(_tune_gc())
                nursery.start_soon(_collect_garbage)
                if worker is not None:  # its supervisor announces and counts
                    nursery.start_soon(worker.serve, proxy, _announce)
                else:
                    _announce(proxy)
                if metrics_at is not None:
                    _say(f"skmsg proxy: metrics on http://{metrics_at}/metrics")
                if interval > 0:
                    nursery.start_soon(_show_counters, proxy, interval)
                if demo:
                    status = await (run_udp_demo(proxy, _say) if isinstance(proxy, UdpProxy)
                                    else run_demo(proxy, _say))
                    nursery.cancel_scope.cancel()
    if proxy is not None and worker is None:
        _tell(format_table(proxy.statistics()))
    return status


#: How often, in seconds, the command looks for reference cycles.
GC_INTERVAL = 1.0
#: The garbage collector's own trigger, kept as a safety valve: the youngest
#: generation is also collected at once after this many allocations (net of
#: frees) between two clock ticks (Python's default: 700).
GC_VALVE = 1_000_000


def _tune_gc() -> Callable[[], None]:
    """Tune the garbage collector for a long-running server, once it started:
    what start-up made (modules, the policy, the listeners) is frozen out of
    every collection (``gc.freeze``), and the search for reference cycles
    runs on a clock (:func:`_collect_garbage`, started beside it) rather than
    after a number of allocations. A collection's work grows with the young
    objects still alive, so a trigger on allocations makes a thousand clients
    arriving at once pay for collections while they are being served (8% of
    the proxy's CPU through such a burst at a trigger of 50,000, measured;
    3% on the clock, which only lands in a burst now and then). Each
    client's objects are freed by reference counting as before (a closed
    client leaves no cycle behind); only cycles wait, a second at most. The
    allocation trigger stays as a safety valve at :data:`GC_VALVE`. Returns
    what puts the collector back as it was (the command may run inside a
    bigger program)."""
    saved = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_VALVE, saved[1], saved[2])

    def restore() -> None:
        gc.set_threshold(*saved)
        gc.unfreeze()

    return restore


async def _collect_garbage(interval: float = GC_INTERVAL) -> None:
    """Every ``interval`` seconds until cancelled, run the collection Python's
    own trigger would run, at that moment: the trigger is lowered to a single
    allocation and one object is made, so Python chooses the generation as
    it always does (the middle one every ``threshold1`` collections, and the
    oldest only when its own rules say so: they keep full collections rare
    while long-lived objects accumulate), then the trigger is put back."""
    while True:
        await trio.sleep(interval)
        threshold = gc.get_threshold()
        gc.set_threshold(1, *threshold[1:])
        try:
            _allocate()
        finally:
            gc.set_threshold(*threshold)


def _allocate() -> set[None]:
    """A new object the collector tracks, which sets off its trigger (a set:
    sets are always allocated anew, never taken from a free list)."""
    return set()


def _announce(proxy: Proxy | UdpProxy) -> None:
    _say(f"skmsg proxy: listening on {', '.join(str(a) for a in proxy.listen)}")
    kind = " (embedded echo)" if proxy.embedded else ""
    _say("skmsg proxy: backends " + ", ".join(
        f"[{i}] {addr}{kind}" for i, addr in enumerate(proxy.backends)))
    parser = "the policy's parse" if proxy.policy.parse else proxy.framing.name
    tls = proxy.config.tls if isinstance(proxy, Proxy) else None
    if tls is not None:
        _say("skmsg proxy: TLS " + ", ".join(
            ([f"from clients (certificate {tls.cert_path or 'from --cert'})"] if tls.server else [])
            + (["to backends"] if tls.client else [])))
    _say(f"skmsg proxy: parser {parser}, policy {proxy.policy.name}; Ctrl-C stops")


async def _serve_metrics(
    proxy: Proxy | UdpProxy, where: Address,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``proxy``'s metrics at ``where`` until cancelled; ``task_status``
    gets the address it listens on.

    Raises:
        ProxyError: it cannot listen there.
    """
    try:
        server = start_metrics(proxy, where, trio.lowlevel.current_trio_token())
    except OSError as exc:
        raise ProxyError(f"--metrics {where}: cannot listen: {_why(exc)}") from exc
    task_status.started(server.address)
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.close)


async def _on_signals(signals: AsyncIterator[int], scope: trio.CancelScope,
                     running: list[Proxy | UdpProxy]) -> None:
    """SIGINT and SIGTERM stop the proxy; SIGHUP reloads its ``--policy`` file
    (:meth:`~skmsg._proxy.ProxyPrograms.reload_policy`), one line saying how
    it went."""
    async for signum in signals:
        if signum != signal.SIGHUP:
            _tell(f"skmsg proxy: {signal.Signals(signum).name}: shutting down")
            scope.cancel()
            return
        if not running:
            _tell("skmsg proxy: SIGHUP: not serving yet; nothing reloaded")
            continue
        proxy = running[0]
        if proxy.reload_policy():
            _tell(f"skmsg proxy: SIGHUP: policy {proxy.policy.name} reloaded "
                  f"(generation {proxy.counters.policy_generation})")
        else:
            _tell(f"skmsg proxy: SIGHUP: policy not reloaded, generation "
                  f"{proxy.counters.policy_generation} kept (see the log line)")


async def _show_counters(proxy: Proxy | UdpProxy, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        _tell(format_table(proxy.statistics()) + "\n")
