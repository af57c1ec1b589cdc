"""asyncbus benchmarks: ``python -m benchmarks [--quick|--full] [--transport T] [--json PATH]``.

Throughput of the ``udpm`` transport (LCM-compatible UDP multicast on the loopback
interface) and of the AF_UNIX buses (``unix:``, ``seqpacket:``) with the publisher and
every subscriber in a separate process, each next to a raw-socket Python loop that
sends the same bytes with no framework at all; and, on the AF_UNIX buses, what one
slow subscriber does to a fast one under each overflow policy:

* :mod:`benchmarks.common` -- the workload, the wire bytes, what workers report;
* :mod:`benchmarks.raw` -- the udpm baseline: blocking sockets, ``sendto``/``recv`` loops;
* :mod:`benchmarks.raw_unix` -- the AF_UNIX baselines: SOCK_DGRAM and SOCK_SEQPACKET,
  blocking ``send``/``recv`` loops;
* :mod:`benchmarks.bus` -- the same workload through the public ``asyncbus`` API,
  on the default asyncio loop or on uvloop;
* :mod:`benchmarks.large` -- 1 MiB and 64 MiB payloads read by every subscriber:
  asyncbus's shared segments against a SOCK_STREAM copy;
* :mod:`benchmarks.runner` -- starts the processes, hands out the go signal, collects;
* :mod:`benchmarks.report` -- medians, ratios, the JSON document and the markdown tables;
* :mod:`benchmarks.cli` -- the command line.

Benchmarks use the public API only (``import asyncbus``), never ``asyncbus._*``.
"""
