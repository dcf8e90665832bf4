"""Walking an ONNX graph with its nested bodies (Scan/Loop/If): a rewrite or a check that reads only
`graph.node` misses what sits inside them (the vision graph's chunked full attention is a Scan body)."""

from __future__ import annotations

from itertools import chain
from typing import Iterator

import onnx


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Every body nested in `graph`, at any depth."""
    for node in graph.node:
        for attr in node.attribute:
            for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs):
                yield g
                yield from subgraphs(g)


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of `graph` and of every body nested in it."""
    return chain(graph.node, *(g.node for g in subgraphs(graph)))
