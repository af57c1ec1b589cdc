"""asyncbus benchmarks: ``python -m benchmarks [--quick|--full] [--json PATH]``.

Throughput of the ``udpm`` transport (LCM-compatible UDP multicast on the loopback
interface) with the publisher and every subscriber in a separate process, next to a
raw-socket Python loop that sends the same bytes with no framework at all:

* :mod:`benchmarks.common` -- the workload, the wire bytes, what workers report;
* :mod:`benchmarks.raw` -- the baseline: blocking sockets, ``sendto``/``recv`` loops;
* :mod:`benchmarks.bus` -- the same workload through the public ``asyncbus`` API,
  on the default asyncio loop or on uvloop;
* :mod:`benchmarks.runner` -- starts the processes, hands out the go signal, collects;
* :mod:`benchmarks.report` -- medians, ratios, the JSON document and the markdown table;
* :mod:`benchmarks.cli` -- the command line.

Benchmarks use the public API only (``import asyncbus``), never ``asyncbus._*``.
"""
