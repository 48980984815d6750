#!/usr/bin/env bash
# Build the MiniDFSCluster test harness once: downloads Hadoop from Maven Central
# (cached in ~/.m2) and writes target/minidfs-1.0.jar + target/classpath.txt,
# which tests/hdfs_cluster.py runs with plain `java -cp`.
set -euo pipefail
cd "$(dirname "$0")"
command -v java >/dev/null || { echo "prepare.sh: java not found (apt-get install openjdk-17-jdk-headless)" >&2; exit 1; }
command -v mvn >/dev/null || { echo "prepare.sh: mvn not found (apt-get install maven)" >&2; exit 1; }
mvn -q -B package
test -s target/classpath.txt
echo "minidfs ready: $(pwd)/target/minidfs-1.0.jar"
