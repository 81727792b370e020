"""RelayFS's side-by-side benchmark (run it as ``scripts/bench.py``).

Modules, one idea each:

* ``motoserver``: moto's S3 server in its own process, with the benchmark-only patches the
  traps in BENCHMARKS.md call for (keep-alive, ranged GETs without a whole-object copy,
  ``HEAD ?versionId=null``, one-copy multipart completion);
* ``proxy``: the shaping proxy in front of it (pipelined one-way delay, bandwidth caps);
* ``rig``: starts both, hands out S3 clients and buckets, checks the link;
* ``data``: unique, cheap, checkable file contents;
* ``measure``: clocks, percentiles, page-cache dropping, /proc readings;
* ``systems``: native, boto3, relayfs, rclone, s3fs behind one interface;
* ``workloads``: W1..W7, the 2 GiB daemon phase (RSS, CPU, interference);
* ``report``: the table, the ratios and the JSON;
* ``loadgen``: the writer/reader processes the 2 GiB phase runs beside the daemon;
* ``cli``: flags and the order of things.
"""
