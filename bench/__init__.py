"""``modelfs bench`` and the harness that drives modelfs from outside (CLI, mounts, node and HDFS processes).

``options`` (what to measure), ``runner`` (one run), ``cases``, ``report``; ``harness``, ``nodes``,
``minidfs`` are shared with ``scripts/`` and the tests. May import ``modelfs.store`` and
``modelfs.fs`` (it mounts what it measures), never ``tools``; torch only inside the cases that need it.
"""
