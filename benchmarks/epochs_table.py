"""Per-epoch validation mAP and on-sphere fractions of training runs, as a markdown table.

    python benchmarks/epochs_table.py RUN_DIR [RUN_DIR ...]

One row per run folder (its setup.json): each epoch as ``val_mAP / audio on the clip sphere``,
the selected epoch marked with ``*``, and whether the selected epoch is parked (>= 90% of the
validation audio on the clip sphere; ``hyperbolic.study.cell.PARKED``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere as a plain script

from hyperbolic.study.cell import PARKED  # noqa: E402


def main(argv=None) -> int:
    runs = sys.argv[1:] if argv is None else argv
    print("| run | epochs: val_mAP / audio on clip sphere (* selected) | selected epoch parked |\n|---|---|---|")
    for run in runs:
        setup = json.loads((Path(run) / "setup.json").read_text())
        best = setup["summary"]["best_epoch"]
        cells = [f"{r['val_mAP']:.3f} / {100 * (r.get('val_audio_on_clip_sphere') or 0):.0f}%"
                 + ("*" if r["epoch"] == best else "") for r in setup["history"]]
        parked = (setup["history"][best - 1].get("val_audio_on_clip_sphere") or 0) >= PARKED
        print(f"| {Path(run).name} | {', '.join(cells)} | {'yes' if parked else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
