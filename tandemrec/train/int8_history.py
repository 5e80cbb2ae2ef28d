"""Int8 rewrites around the history input: item rows, positions, padding mask, lengths.

The exported graph derives each with a few nodes of shape arithmetic, and ONNX Runtime spends
about a microsecond a node on one thread whatever its size; here they come from one Shape of
the history and a slice or lookup of a constant, with the same values. A pattern not found is
left as it is (`int8_graph.rewrite_int8` runs them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tandemrec.train.onnx_edit import (
    constant,
    consumers,
    forget_shapes,
    insert_before,
    producers,
    rename_input,
)

INPUT = "history"
POSITIONS = "decoder.pos.weight_quantized"  # the quantiser's name for the position table
LENGTH = "/history/length"


def history_length(graph: Any) -> str:
    """A node giving the history's length T as a (1,) int64 tensor; its output's name."""
    from onnx import helper

    graph.node.insert(0, helper.make_node("Shape", [INPUT], [LENGTH], start=1, end=2,
                                          name=LENGTH))
    return LENGTH


def slice_positions(graph: Any, length: str) -> None:
    """The position rows as a slice of the table stored reversed and dequantised at load."""
    # Positions count back from the most recent item: rows T-1, ..., 0 of the int8 table,
    # gathered at indices from Shape, Range and Sub, dequantised, unsqueezed. Stored reversed
    # as (1, max_len, D) they are its last T rows, one Slice from -T. The table is dequantised
    # before the slice as (float(q) - float(zero point)) * scale, DequantizeLinear's own
    # arithmetic (an exact difference, one rounded product), in nodes ONNX Runtime folds into a
    # constant at load (DequantizeLinear itself it keeps): the file still holds int8.
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    users = consumers(graph)
    found = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == POSITIONS]
    if len(found) != 1 or POSITIONS not in inits:
        return
    gather = found[0]
    after = users.get(gather.output[0], [])
    dq = after[0] if len(after) == 1 and after[0].op_type == "DequantizeLinear" else None
    after = users.get(dq.output[0], []) if dq is not None else []
    unsqueeze = after[0] if len(after) == 1 and after[0].op_type == "Unsqueeze" else None
    axes = constant(graph, unsqueeze.input[1]) if unsqueeze is not None else None
    if dq is None or unsqueeze is None or axes is None or axes.tolist() != [0]:
        return
    table = numpy_helper.to_array(inits[POSITIONS])
    rev = numpy_helper.from_array(np.ascontiguousarray(table[None, ::-1]), f"{POSITIONS}_rev")
    end = numpy_helper.from_array(np.array([table.shape[0]], np.int64), f"{POSITIONS}_end")
    axis = numpy_helper.from_array(np.array([1], np.int64), f"{POSITIONS}_axis")
    graph.initializer.extend([rev, end, axis])
    start, name = f"{LENGTH}_neg", f"{POSITIONS}_rev"
    scale, zero = dq.input[1], dq.input[2]
    insert_before(graph, gather, [
        helper.make_node("Cast", [rev.name], [f"{name}_float"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [zero], [f"{name}_zero"], to=TensorProto.FLOAT),
        helper.make_node("Sub", [f"{name}_float", f"{name}_zero"], [f"{name}_centred"]),
        helper.make_node("Mul", [f"{name}_centred", scale], [f"{name}_dequantized"]),
        helper.make_node("Neg", [length], [start], name=start),
        helper.make_node("Slice", [f"{name}_dequantized", start, end.name, axis.name],
                         [unsqueeze.output[0]], name=f"{POSITIONS}_slice")])
    for node in (gather, dq, unsqueeze):
        graph.node.remove(node)
    forget_shapes(graph, {unsqueeze.output[0]})


def valid_from_table(graph: Any) -> None:
    """The padding mask (`history != 0`) as one lookup of the history in a constant table."""
    # Equal, Not, Unsqueeze and Cast become a Gather from a (N+2, 1) table, False at row 0
    # alone, cast to float at load: N+2 rows so that -(N+1), which the item lookup reads as
    # row 0 (negative ids count from the end), still counts as an item.
    from onnx import helper, numpy_helper

    users = consumers(graph)
    rows = _item_rows(graph)
    chain: list[Any] = []
    for node in graph.node:
        zero = constant(graph, node.input[1]) if node.op_type == "Equal" else None
        if node.input and node.input[0] == INPUT and zero is not None and zero.size == 1 \
                and zero.item() == 0:
            chain = [node]
    for op in ("Not", "Unsqueeze", "Cast"):
        nxt = users.get(chain[-1].output[0], []) if chain else []
        chain = chain + [nxt[0]] if len(nxt) == 1 and nxt[0].op_type == op else []
    axes = constant(graph, chain[2].input[1]) if chain else None
    if rows is None or axes is None or axes.tolist() != [2]:
        return
    valid = np.ones((rows + 1, 1), dtype=bool)
    valid[0] = False
    table = numpy_helper.from_array(valid, f"{INPUT}_valid_table")
    graph.initializer.append(table)
    cast, floats = chain[3], f"{table.name}_cast"
    to = next(a.i for a in cast.attribute if a.name == "to")
    insert_before(graph, chain[0], [  # the cast of the table: a constant folded at load
        helper.make_node("Cast", [table.name], [floats], to=to, name=floats),
        helper.make_node("Gather", [floats, INPUT], [cast.output[0]], name=f"{INPUT}_valid")])
    for node in chain:
        graph.node.remove(node)


def _item_rows(graph: Any) -> int | None:
    """N+1, the rows of the item table the history is looked up in (after `_gather_rows`)."""
    for t in graph.initializer:
        if t.name.startswith("items.") and t.name.endswith("_rows") and len(t.dims) == 2:
            return int(t.dims[0])
    return None


def attention_lengths(graph: Any, length: str) -> None:
    """GroupQueryAttention's lengths (T - 1, T) from the history's, not from its projection."""
    from onnx import TensorProto, helper, numpy_helper

    found = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if not found:
        return
    one = numpy_helper.from_array(np.array([1], np.int32), f"{LENGTH}_one")
    graph.initializer.append(one)
    total, last = f"{LENGTH}_int32", f"{LENGTH}_last"
    insert_before(graph, found[0], [
        helper.make_node("Cast", [length], [total], to=TensorProto.INT32, name=total),
        helper.make_node("Sub", [total, one.name], [last], name=last)])
    for node in found:
        node.input[5], node.input[6] = last, total


ROW_OPS = {"DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul"}


def history_rows(graph: Any) -> None:
    """The item lookup reads the (1, T) history as it comes: no `history[0]`, no unsqueeze."""
    # The vectors made from the looked-up rows (dequantised; factorised, times V) were
    # unsqueezed to (1, T, D). Every node in between works row by row or on the tensor whole
    # (per-tensor dequantisation, dynamic quantisation over all elements, the integer matmul,
    # scaling), so fed (1, T) rows it gives those values as (1, T, D) directly.
    users = consumers(graph)
    made = producers(graph)
    rows = [n for n in graph.node if n.op_type == "Gather" and n.input[0].startswith("items.")
            and n.input[0].endswith("_rows") and n.input[1] in made]
    first = made[rows[0].input[1]] if len(rows) == 1 else None
    index = constant(graph, first.input[1]) if first is not None and first.op_type == "Gather" \
        else None
    if first is None or first.input[0] != INPUT or index is None or index.tolist() != 0:
        return
    region: list[Any] = []
    frontier, ends = [rows[0].output[0]], []
    while frontier:
        name = frontier.pop()
        for node in users.get(name, []):
            if node.op_type == "Unsqueeze":
                ends.append(node)
            elif node.op_type not in ROW_OPS or (node.op_type == "MatMulInteger"
                                                 and name in node.input[1::2]):
                return  # the rows as a matmul's B (or its zero point): leave it
            elif all(node is not n for n in region):
                region.append(node)
                frontier.extend(node.output)
    axes = constant(graph, ends[0].input[1]) if len(ends) == 1 else None
    if axes is None or axes.tolist() != [0]:
        return
    rows[0].input[1] = INPUT
    graph.node.remove(ends[0])
    rename_input(graph, ends[0].output[0], ends[0].input[0])
    forget_shapes(graph, {out for n in region for out in n.output} | {rows[0].output[0]})
