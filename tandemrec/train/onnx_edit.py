"""Small helpers for editing an ONNX graph in place (the int8 rewrites use them)."""

from __future__ import annotations

from typing import Any

import numpy as np


def consumers(graph: Any) -> dict[str, list[Any]]:
    """Per tensor name, the nodes that read it."""
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def producers(graph: Any) -> dict[str, Any]:
    """Per tensor name, the node that writes it."""
    return {out: node for node in graph.node for out in node.output}


def constant(graph: Any, name: str) -> np.ndarray | None:
    """The value of `name` when it is an initializer or a Constant node's output."""
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def forget_shapes(graph: Any, names: set[str]) -> None:
    """Drop the shapes the quantiser recorded for tensors a rewrite changed."""
    for info in [v for v in graph.value_info if v.name in names]:
        graph.value_info.remove(info)


def insert_before(graph: Any, node: Any, new: list[Any]) -> None:
    """Put `new` (in order) right before `node`, keeping the graph topologically sorted."""
    at = list(graph.node).index(node)
    for i, n in enumerate(new):
        graph.node.insert(at + i, n)


def rename_input(graph: Any, old: str, new: str) -> None:
    """Every node that read `old` reads `new` instead."""
    for node in graph.node:
        if old in node.input:
            node.input[:] = [new if x == old else x for x in node.input]


def prune(graph: Any) -> None:
    """Remove the nodes nothing reads (graph outputs aside) and the initializers no node reads."""
    outputs = {o.name for o in graph.output}
    while True:
        users = consumers(graph)
        dead = [n for n in graph.node
                if not any(o in users or o in outputs for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    users = consumers(graph)
    for t in [t for t in graph.initializer if t.name not in users]:
        graph.initializer.remove(t)
    forget_shapes(graph, {v.name for v in graph.value_info} - set(users))
