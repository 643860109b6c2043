"""What a finished ``ensemble run`` shows about the GPU path; run by ``benchmarks/gpu_check.sh``.

    python benchmarks/gpu_check_summary.py RUN_DIR [--gpu-samples FILE]

Prints: the holdout accuracy of the final model and of the best single CNN (the one with the best
validation accuracy, as the build picks), CNN trials by state and the device they trained on, the
per-trial overhead (wall time less steady training) and trials at once, GPU utilization sampled
during the CNN search, all GPUs together and each one (``--gpu-samples``: lines
``EPOCH_SECONDS,GPU_INDEX,UTIL_PERCENT,MEMORY_MIB`` as gpu_check.sh writes them, or without the index
for one GPU; "not measured" without samples), and each stage's wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any


def holdout(run: Path) -> list[str]:
    path = run / "report" / "summary.json"
    if not path.is_file():
        return ["holdout: no report (the run did not finish)"]
    summary = json.loads(path.read_text())
    out = [f"final model: {summary['final_model']}, holdout accuracy {summary['holdout_accuracy']:.4f}"]
    cnns = [r for r in summary["leaderboard"] if r["kind"] == "cnn"]
    if cnns:
        best = max(cnns, key=lambda r: (r["val_accuracy"] or 0.0, -r["rank"]))
        out.append(f"best single CNN (by validation): {best['model']}, holdout accuracy "
                   f"{best['holdout_accuracy']:.4f} (validation {best['val_accuracy']:.4f})")  # fmt: skip
    else:
        out.append("best single CNN: none")
    return out


def cnn_trials(run: Path) -> tuple[list[str], dict[str, Any]]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = run / "optuna.journal"
    if not journal.is_file():
        return ["CNN trials: none (no journal)"], {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    if "cnn" not in optuna.get_all_study_names(storage=storage):
        return ["CNN trials: none (no cnn study)"], {}
    trials = optuna.load_study(study_name="cnn", storage=storage).get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    done = [t.user_attrs for t in trials if t.state.name == "COMPLETE"]
    devices = sorted(
        {f"{a.get('backend')}/{'cpu' if a.get('backend_device') == 'cpu' else a.get('device')}" for a in done}
    )
    out = [f"CNN trials: {states.get('complete', 0)} completed ({', '.join(f'{k} {v}' for k, v in states.items())})"
           f" on {', '.join(devices) or '-'}"]  # fmt: skip
    over = [float(a["overhead_seconds"]) for a in done if "overhead_seconds" in a]
    walls = [float(a["trial_seconds"]) for a in done if "trial_seconds" in a]
    if over:
        share = sum(over) / sum(walls)
        out.append(f"per-trial overhead: median {statistics.median(over):.1f}s, mean {statistics.mean(over):.1f}s "
                   f"of a mean trial wall time {statistics.mean(walls):.1f}s ({share:.0%})")  # fmt: skip
    speeds = [float(a["recent_images_per_second"]) for a in done if "recent_images_per_second" in a]
    if speeds:
        out.append(f"training speed per trial: median {statistics.median(speeds):,.0f} images/s")
    return out, {"trials": len(trials)}


def stage_times(run: Path) -> tuple[list[str], tuple[float, float] | None]:
    """Each finished stage's wall time, and the CNN search's (start, end) in epoch seconds."""
    path = run / "stages.json"
    if not path.is_file():
        return ["stages: none recorded"], None
    data = json.loads(path.read_text())
    out, window = [], None
    for name, st in data.get("stages", {}).items():
        note = f" ({st['skipped']})" if st.get("skipped") else ""
        out.append(f"stage {name:11s} {st.get('seconds', 0):7.1f}s{note}")
        if name == "cnn_search" and st.get("finished"):
            end = datetime.strptime(st["finished"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
            window = (end - float(st["seconds"]), end)
    plan = data.get("stages", {}).get("cnn_search", {}).get("plan") or []
    at_once = {p.get("at_once") for p in plan if p.get("at_once")}
    if at_once:
        out.append(f"CNN trials at once: {', '.join(map(str, sorted(at_once)))}")
    return out, window


def gpu_utilization(samples: Path | None, window: tuple[float, float] | None) -> list[str]:
    """The GPUs' utilization during the search: all together, then each GPU's when there are several.

    A sample line is ``seconds,index,utilization,memory`` (``seconds,utilization,memory``: GPU 0).
    """
    if samples is None or not samples.is_file() or not samples.read_text().strip():
        return ["GPU utilization during the search: not measured (no nvidia-smi samples)"]
    rows = []
    for line in samples.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            parts.insert(1, "0")
        try:
            rows.append((float(parts[0]), parts[1], float(parts[2]), float(parts[3])))
        except (ValueError, IndexError):
            continue
    if window is not None:
        rows = [r for r in rows if window[0] <= r[0] <= window[1]]
    if not rows:
        return ["GPU utilization during the search: not measured (no samples in the search's time)"]
    out = [_utilization("GPU utilization during the search", rows)]
    gpus = sorted({r[1] for r in rows})
    if len(gpus) > 1:
        out += [_utilization(f"  GPU {g}", [r for r in rows if r[1] == g]) for g in gpus]
    return out


def _utilization(what: str, rows: list[tuple[float, str, float, float]]) -> str:
    util = [r[2] for r in rows]
    memory = max(r[3] for r in rows)
    return (
        f"{what}: mean {statistics.mean(util):.0f}%, median {statistics.median(util):.0f}%, "
        f"max memory {memory:,.0f} MiB ({len(rows)} samples)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the run folder, e.g. runs/gpu-best")
    ap.add_argument("--gpu-samples", type=Path, default=None)
    args = ap.parse_args()
    lines = holdout(args.run)
    trials, _ = cnn_trials(args.run)
    stages, window = stage_times(args.run)
    for line in [*lines, *trials, *gpu_utilization(args.gpu_samples, window), *stages]:
        print(line)


if __name__ == "__main__":
    main()
