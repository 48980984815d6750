"""Hadoop configuration for hdfs-native: the user's XML files win, modelfs adds only bounds.

hdfs-native reads HADOOP_CONF_DIR (or HADOOP_HOME/etc/hadoop) core-site.xml / hdfs-site.xml
and honours HADOOP_USER_NAME. Its defaults retry an absent namenode for minutes; a FUSE read
must fail with EIO instead of hanging, so connect/retry settings are bounded unless those
files set them.
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

log = logging.getLogger(__name__)

#: hdfs-native settings that bound how long one call may wait for an absent
#: namenode or datanode. Used only where the Hadoop config files do not set them.
BOUNDED_CLIENT_CONFIG: dict[str, str] = {
    "dfs.client.failover.max.attempts": "1",
    "dfs.client.failover.sleep.base.millis": "100",
    "dfs.client.failover.sleep.max.millis": "1000",
    "dfs.client.socket-timeout": "15000",
}
#: An HA nameservice (a URL host without port) needs a few failover attempts to
#: find its active namenode; a single namenode gets none (our retries take over).
HA_FAILOVER_ATTEMPTS = "4"


def hadoop_conf_dir() -> Path | None:
    """The directory hdfs-native takes Hadoop's XML config from, if any."""
    if os.environ.get("HADOOP_CONF_DIR"):
        return Path(os.environ["HADOOP_CONF_DIR"])
    if os.environ.get("HADOOP_HOME"):
        return Path(os.environ["HADOOP_HOME"]) / "etc" / "hadoop"
    return None


def configured_keys(conf_dir: Path | None) -> set[str]:
    """Property names set in core-site.xml / hdfs-site.xml (so we do not override them)."""
    keys: set[str] = set()
    if conf_dir is None:
        return keys
    for name in ("core-site.xml", "hdfs-site.xml"):
        path = conf_dir / name
        if not path.is_file():
            continue
        try:
            for prop in ET.parse(path).getroot().iter("property"):
                key = prop.findtext("name")
                if key:
                    keys.add(key.strip())
        except (ET.ParseError, OSError) as e:
            log.warning("cannot parse %s: %s", path, e)
    return keys


def client_config(extra: dict[str, str] | None = None, ha: bool = False) -> dict[str, str]:
    """Our bounded defaults, minus what the user's Hadoop config sets, plus ``extra``."""
    taken = configured_keys(hadoop_conf_dir())
    bounded = dict(BOUNDED_CLIENT_CONFIG)
    if ha:
        bounded["dfs.client.failover.max.attempts"] = HA_FAILOVER_ATTEMPTS
    config = {k: v for k, v in bounded.items() if k not in taken}
    config.update(extra or {})
    return config


def default_fs_configured(config: dict[str, str]) -> bool:
    """Whether ``hdfs:///path`` has a namenode: ``fs.defaultFS`` in ``config`` or Hadoop's XML files."""
    return "fs.defaultFS" in config or "fs.defaultFS" in configured_keys(hadoop_conf_dir())
