"""The stages of ``ensemble run``: the baselines child's environment and cores."""

from __future__ import annotations

import time


def test_the_baselines_child_gets_the_storage_url_in_its_environment_not_argv(tmp_path, monkeypatch) -> None:
    import json
    import sys
    from types import SimpleNamespace

    from ensemble.pipeline import baselines_child
    from ensemble.pipeline.presets import PRESETS
    from ensemble.search.storage import STORAGE_ENV

    run = SimpleNamespace(name="r", path=lambda *p: tmp_path.joinpath(*p))
    url = "postgresql://alice:s3cret@db.example/ensemble"
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///not-this-one.db")  # the parent's own: replaced by the run's
    monkeypatch.setattr(baselines_child, "baseline_plan", lambda *a: {1: ["logreg"]})  # no storage to read here
    seen = tmp_path / "child.json"
    keep = f"json.dump([os.environ.get({STORAGE_ENV!r}), sys.argv[1:]], open({str(seen)!r}, 'w'))"
    record = f"import json, os, sys; {keep}"

    class Recorded(baselines_child.BaselineWorker):
        def command(self, families: list[str], trials: int) -> list[str]:  # the real command, as a child's argv
            return [sys.executable, "-c", record, *super().command(families, trials)]

    worker = Recorded(run, PRESETS["quick"], time.time() + 60, lambda s: None, url)  # type: ignore[arg-type]
    worker.run()  # starts the child process the way the pipeline does
    env_url, argv = json.loads(seen.read_text())
    assert worker.ok and env_url == url
    assert "baselines" in argv and not any("s3cret" in a or "postgresql" in a for a in argv) and "--storage" not in argv


def test_baseline_cores_auto_leaves_cores_to_the_cnn_trainers(monkeypatch) -> None:
    import os

    from ensemble.pipeline import baselines_child

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert baselines_child.baseline_cores("auto") == list(range(4, 16))
    assert baselines_child.baseline_cores(4) == [12, 13, 14, 15]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert baselines_child.baseline_cores("auto") == [1]  # always one, never the CNN's last core
