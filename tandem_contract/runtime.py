"""Run the student ONNX model on the device with ONNX Runtime (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxStudent:
    """The on-device intent model: history -> (intent logits (K+1,), item scores (N+1,)).

    One inference session per model file; `threads` bounds the cores it may take on a phone.
    The graph reads one history at a time (tandemrec.train.export: batch 1, no padding inside).
    """

    def __init__(self, path: Path | str, threads: int = 1, max_len: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime plans a memory pattern per input shape; a device's history grows by one
        # item a request, so each shape is new and the plan a cost that never pays back.
        options.enable_mem_pattern = False
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.run_options = ort.RunOptions()  # made once: each run would make a default one
        meta = self.session.get_modelmeta().custom_metadata_map
        # The model's own history window (written at export) unless the caller narrows it.
        self.max_len = max_len or (int(meta["max_len"]) if "max_len" in meta else None)
        self.n_items = int(meta["n_items"]) if "n_items" in meta else None

    def run(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One request: the item ids of the user's history in time order (most recent last);
        for a semantic-id student, their rows of its code table, (T, L')."""
        h = np.asarray(history, dtype=np.int64)
        if self.max_len is not None:
            h = h[-self.max_len:]
        if h.size == 0:  # an empty history reads as one padding step
            h = np.zeros((1, *h.shape[1:]), dtype=np.int64)
        intents, scores = self.session.run(self.output_names, {self.input_name: h[None]},
                                           self.run_options)
        return intents[0], scores[0]
