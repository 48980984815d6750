"""HDFS through hdfs-native (no JVM on compute hosts): one pack file per version, range reads.

May import ``backends.base``/``layout``, ``errors`` and ``stats``.
"""
