"""Rewrites of the int8 student graph that leave every output bit as it was.

`quantize_dynamic` writes a graph that moves more bytes and runs more nodes than the device
needs. Each rewrite here replaces a part of it with operations that compute the same values in
the same order (integer sums, copies, exact index arithmetic), so the file's outputs stay the
bits the quantised graph gave (tests/core/test_device_graph.py against the module's own graph,
tests/core/test_int8_rewrites.py against the file without the newer rewrites).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tandemrec.train.int8_history import (
    attention_lengths,
    history_length,
    history_rows,
    slice_positions,
    valid_from_table,
)
from tandemrec.train.onnx_edit import constant, consumers, forget_shapes, prune

CONTRIB = "com.microsoft"  # ONNX Runtime's contrib operators (GroupQueryAttention and others)


def rewrite_int8(path: Path) -> None:
    """Rewrite the quantised file at `path` in place (see the module's docstring)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    _gather_rows(graph)
    _split_matmuls(graph)
    _last_row_parts(graph)
    history_rows(graph)
    length = history_length(graph)
    slice_positions(graph, length)
    valid_from_table(graph)
    attention_lengths(graph, length)
    prune(graph)
    onnx.save(model, str(path))


def _gather_rows(graph: Any) -> None:
    """Store the item table by rows for its lookup, which then copies rows, not bytes.

    The table is kept column-major (E^T, `ItemTable`) for the tied output head, so the lookup
    gathers columns of an int8 matrix: one byte at a time, a tenth of the student's time on
    ML-1M. Rewritten: the table is stored transposed and gathered by rows, the transpose that
    followed the lookup goes, and the head reads a transpose of it that ONNX Runtime folds into
    a constant when it loads the model. The file holds the table once.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    users = consumers(graph)
    scalar = {name for name, t in inits.items() if len(t.dims) == 0}
    for gather in [n for n in graph.node if n.op_type == "Gather"]:
        table = inits.get(gather.input[0])
        axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
        if table is None or len(table.dims) != 2 or axis != 1:
            continue
        chain = [gather]  # the lookup, its per-tensor dequantisation if any, then a transpose
        while len(users.get(chain[-1].output[0], [])) == 1:
            nxt = users[chain[-1].output[0]][0]
            chain.append(nxt)
            if nxt.op_type != "DequantizeLinear" or not set(nxt.input[1:]) <= scalar:
                break
        flip = chain[-1]
        if flip.op_type != "Transpose" or [a.ints for a in flip.attribute] != [[1, 0]]:
            continue
        rows = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(table).T),
                                       table.name + "_rows")
        graph.initializer.remove(table)
        graph.initializer.append(rows)
        gather.input[0] = rows.name
        del gather.attribute[:]  # axis 0
        for node in users.get(flip.output[0], []):  # read the lookup as it now comes, by rows
            node.input[:] = [chain[-2].output[0] if x == flip.output[0] else x
                             for x in node.input]
        graph.node.remove(flip)
        forget_shapes(graph, {n.output[0] for n in chain})
        if [n for n in users[table.name] if n is not gather]:  # the head: the table as it was,
            graph.node.insert(0, helper.make_node(  # a transpose ONNX Runtime folds at load
                "Transpose", [rows.name], [table.name], perm=[1, 0], name=table.name + "_cols"))


def _split_matmuls(graph: Any) -> None:
    """A quantised matmul whose output is split by columns becomes one matmul per part.

    `qkv` and `gate_up` project once and split the result, which copies it whole. Each part
    now multiplies by its own columns of the int8 weight (same scale and zero point) in ONNX
    Runtime's DynamicQuantizeMatMul, the kernel the whole matmul ran in, after its own dynamic
    quantisation of the same input: integer sums are exact in any order, so every part is the
    bits the split gave, without the copy.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    made = {o: n for n in graph.node for o in n.output}
    users = consumers(graph)
    for split in [n for n in graph.node if n.op_type == "Split"]:
        found = _quantised_matmul(split, made, users, inits)
        sizes = constant(graph, split.input[1]) if len(split.input) > 1 else None
        axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
        if found is None or sizes is None or axis not in (-1, 2):
            continue
        dql, mm, cast, mul, scales = found
        weight = numpy_helper.to_array(inits[mm.input[1]])
        if weight.ndim != 2 or int(sizes.sum()) != weight.shape[1]:
            continue
        b_scale = next(x for x in scales.input if x != dql.output[1])
        at, start = list(graph.node).index(split), 0
        for i, (size, out) in enumerate(zip(sizes.tolist(), split.output, strict=True)):
            part = numpy_helper.from_array(np.ascontiguousarray(weight[:, start:start + size]),
                                           f"{mm.input[1]}_part{i}")
            graph.initializer.append(part)
            graph.node.insert(at + i, helper.make_node(
                "DynamicQuantizeMatMul", [dql.input[0], part.name, b_scale, mm.input[3]], [out],
                domain=CONTRIB, name=f"{mm.name}_part{i}"))
            start += size
        for node in (split, mul, cast, mm, scales, dql):
            graph.node.remove(node)
        graph.initializer.remove(inits[mm.input[1]])
        if len(users[split.input[1]]) == 1:  # the sizes, read by the split alone
            if split.input[1] in inits:
                graph.initializer.remove(inits[split.input[1]])
            elif split.input[1] in made:
                graph.node.remove(made[split.input[1]])
        forget_shapes(graph, set(split.output))


def _quantised_matmul(split: Any, made: dict[str, Any], users: dict[str, list[Any]],
                      inits: dict[str, Any]) -> tuple[Any, ...] | None:
    """The nodes of the dynamic int8 matmul whose output `split` alone reads, as
    `quantize_dynamic` writes it: DynamicQuantizeLinear, MatMulInteger on a weight, Cast to
    float, Mul by the product of the two scales (that Mul too); else None."""
    mul = made.get(split.input[0])
    cast = made.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" else None
    mm = made.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
    dql = made.get(mm.input[0]) if mm is not None and mm.op_type == "MatMulInteger" else None
    if mul is None or cast is None or mm is None or dql is None \
            or dql.op_type != "DynamicQuantizeLinear" or mm.input[1] not in inits:
        return None
    scales = made.get(mul.input[1])
    if scales is None or scales.op_type != "Mul" or dql.output[1] not in scales.input:
        return None
    single = (*dql.output, mul.output[0], cast.output[0], mm.output[0], scales.output[0])
    if any(len(users.get(x, [])) != 1 for x in single):
        return None
    return dql, mm, cast, mul, scales


def _last_row_parts(graph: Any) -> None:
    """A part read only at its last row (the last layer's queries) multiplies that row alone."""
    # Each part (`_split_matmuls`) quantised the same input again. One DynamicQuantizeLinear
    # now feeds each part's MatMulIntegerToFloat, the kernel DynamicQuantizeMatMul runs after
    # its own quantisation (the same input: the same scale and zero point), and the sliced part
    # gets the last row of the quantised input: its scale still comes from every row and each
    # output row is its own integer sums, so the bits stay. Where no part is sliced the parts
    # stay as they are: one node more would cost more than the quantisations saved.
    from onnx import helper

    users = consumers(graph)
    groups: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.op_type == "DynamicQuantizeMatMul" and node.domain == CONTRIB:
            groups.setdefault(node.input[0], []).append(node)
    for source, parts in groups.items():
        last = {p.name: users[p.output[0]][0] for p in parts
                if len(users.get(p.output[0], [])) == 1
                and _is_last_row(graph, users[p.output[0]][0])}
        if len(parts) < 2 or not last or any(len(p.input) > 4 and p.input[4] for p in parts):
            continue
        q = [f"{source}_quantized", f"{source}_scale", f"{source}_zero_point"]
        new = [helper.make_node("DynamicQuantizeLinear", [source], q, name=f"{source}_quantize")]
        for part in parts:
            a, out = q[0], part.output[0]
            if part.name in last:
                rows = last[part.name]
                a, out = f"{q[0]}_last_row", rows.output[0]
                new.append(helper.make_node("Slice", [q[0], *rows.input[1:]], [a],
                                            name=f"{part.name}_last_row"))
                graph.node.remove(rows)
            new.append(helper.make_node(
                "MatMulIntegerToFloat", [a, part.input[1], q[1], part.input[2], q[2],
                                         part.input[3]], [out], domain=CONTRIB, name=part.name))
        at = min(list(graph.node).index(p) for p in parts)
        for part in parts:
            graph.node.remove(part)
        for i, node in enumerate(new):
            graph.node.insert(at + i, node)
        forget_shapes(graph, {rows.output[0] for rows in last.values()})


def _is_last_row(graph: Any, node: Any) -> bool:
    """Whether `node` is `x[:, -1:]`: a Slice from -1 to the end along axis 1, step 1."""
    if node.op_type != "Slice" or len(node.input) < 4:
        return False
    values = [constant(graph, name) for name in node.input[1:]]
    if any(v is None for v in values):
        return False
    starts, ends, axes = (v.tolist() for v in values[:3])  # type: ignore[union-attr]
    steps = values[3].tolist() if len(values) > 3 else [1]  # type: ignore[union-attr]
    return starts == [-1] and ends[0] >= 2**62 and axes == [1] and steps == [1]
