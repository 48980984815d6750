"""The node-store URL and its options: one dataclass, one default each.

Store URL forms::

    http://h1:p1,h2:p2,h3:p3/?replicas=2&placement=hash&token_file=/etc/modelfs/token
    http://host:port/some/path/          (one server, no query: read-only)

The host list names the nodes (``modelfs serve``); the path, if any, is the same on
every node. The query parameters are the fields of ``NodeStoreOptions``; the backend,
the README table and the parameter check all take names and defaults from it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from ...config import option, parse_fields
from ...errors import InvalidInput
from ...paths import user_path
from .placement import PLACEMENTS, RUN_LENGTH, Placement
from .protocol import read_token_file

#: replicas when the URL names none: two copies, or one when there is one node
DEFAULT_REPLICAS = 2


@dataclass(frozen=True)
class NodeStoreOptions:
    """Query parameters of a node-store URL (``http://n1:p,n2:p/?replicas=2&...``)."""

    replicas: int = option(0, "int", f"copies of every shard (0: {DEFAULT_REPLICAS}, "
                           "or 1 with one node)")
    placement: str = option("hash", "str", f"one of {', '.join(PLACEMENTS)}: rendezvous hashing "
                            "of the shard id, or contiguous runs of a model's shards per replica set")
    run_length: int = option(RUN_LENGTH, "int", "shards per run for placement=range")
    token_file: str = option("", "str", "file holding the bearer token sent with every request")
    timeout: float = option(10.0, "float", "read timeout per request, seconds")
    connect_timeout: float = option(2.0, "float", "connect timeout per request, seconds")
    backoff: float = option(5.0, "float", "seconds a failed node is skipped")
    readonly: bool = option(False, "bool", "refuse writes; on for one server without a query")
    pool: int = option(16, "int", "kept-alive connections per node for shard GETs, as many for the rest")

    def placement_for(self, node_count: int) -> Placement:
        replicas = self.replicas or min(DEFAULT_REPLICAS, max(1, node_count))
        return Placement(mode=self.placement, replicas=replicas, run_length=self.run_length)

    def token(self) -> str:
        """The bearer token from ``token_file`` (empty without one)."""
        if not self.token_file:
            return ""
        try:
            return read_token_file(str(user_path(self.token_file, "token file")))
        except OSError as e:
            raise InvalidInput(f"cannot read token file {self.token_file}: {e.strerror}") from None

    @staticmethod
    def fields() -> list[dataclasses.Field]:
        return list(dataclasses.fields(NodeStoreOptions))


@dataclass(frozen=True)
class NodeStoreURL:
    """A parsed node-store URL: the nodes, the path on each, and the options."""

    nodes: list[str]
    base_path: str
    scheme: str
    options: NodeStoreOptions

    @classmethod
    def parse(cls, url: str) -> NodeStoreURL:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidInput(f"not an http(s) store URL: {url!r}")
        nodes = [n.strip() for n in parts.netloc.split(",") if n.strip()]
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        values = {k: v[-1] for k, v in query.items()}
        if "readonly" not in values and len(nodes) == 1 and not parts.query:
            values["readonly"] = "1"  # one plain HTTP server (nginx): read-only
        try:
            options = NodeStoreOptions(**parse_fields(NodeStoreOptions, values, "store URL parameter"))
        except InvalidInput as e:
            raise InvalidInput(f"{e} in {url!r}") from None
        return cls(nodes, parts.path or "/", parts.scheme, options)
