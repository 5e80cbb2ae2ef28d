"""The teacher and distillation stages on the smoke config, in this process or under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/core/ddp_worker.py \
        DATA RUN_DIR OUT [key=value ...]

Rank 0 writes OUT: every step's loss of each training stage (train/loop.FitResult.step_losses)
and the files of the run directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tandemrec import pipeline
from tandemrec.paths import CONFIGS_DIR
from tandemrec.train import distill, teacher
from tandemrec.train.config import load_config
from tandemrec.train.device import current


def main(data: str, run_dir: str, out: str, *overrides: str) -> None:
    """Train, distil, and on rank 0 write the step losses and the run directory's files."""
    steps: dict[str, list[float]] = {}
    for module in (teacher, distill):
        real = module.fit

        def spy(*args, _real=real, **kwargs):  # type: ignore[no-untyped-def]
            result = _real(*args, **kwargs)
            steps[kwargs["name"]] = result.step_losses
            return result

        module.fit = spy  # type: ignore[assignment]
    sets = [f"dataset={data}", *overrides]
    ctx = pipeline.open_run(load_config(CONFIGS_DIR / "smoke.yaml", sets), Path(run_dir))
    pipeline.stage_train(ctx)
    pipeline.stage_distill(ctx)
    rt = current()
    if rt.is_main:
        files = sorted(p.name for p in Path(run_dir).iterdir())
        Path(out).write_text(json.dumps({"world": rt.world, "steps": steps, "files": files}))


if __name__ == "__main__":
    main(*sys.argv[1:])
