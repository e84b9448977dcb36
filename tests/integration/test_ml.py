"""The ml commands end to end (subprocess, as a user runs them) and the example notebook, executed.

No broker is needed: training reads the simulator, a file or the SQLite store filled by the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from millrace.config import load_settings
from millrace.iot.simulator import FleetConfig, simulate_frame
from millrace.records import ANOMALY_KINDS
from millrace.stores.base import READING_COLUMNS
from millrace.stores.factory import open_store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def millrace(state: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLRACE_")} | {"COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "millrace.cli.main", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_train_list_show_promote_explain_evaluate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = millrace(state, "ml", "train", "--devices", "2", "--hours", "2", "--seed", "3", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    # One simulated fleet (anomaly rate 0.15) of 2 devices x 6 sensors x 7,200 s; dropouts take a few readings.
    assert info["version"] == "v0001" and info["training"]["devices"] == 2
    assert 75_000 < info["training"]["readings"] <= 86_400 and "anomaly_rate=0.15" in info["training"]["source"]
    assert set(info["metrics"]["compared"]) == {"robust_z", "isolation_forest", "mahalanobis", "gradient_boosting"}
    assert info["detector"] == max(info["metrics"]["compared"], key=lambda n: info["metrics"]["compared"][n]["f1"])
    naming = info["metrics"]["validation"]["naming"]  # labelled kinds: naming chosen on validation
    assert naming["chosen"] in naming["mean_kind_f1"] and set(naming["namer_classes"]) <= set(ANOMALY_KINDS)
    assert set(info["importance"]["sensors"]) <= {
        "temperature",
        "humidity",
        "pressure",
        "vibration",
        "voltage",
        "current",
    }

    listed = json.loads(millrace(state, "ml", "list", "--json").stdout)
    assert [(m["version"], m["promoted"]) for m in listed] == [("v0001", False)]
    assert millrace(state, "ml", "promote", "v0001").returncode == 0
    assert json.loads(millrace(state, "ml", "list", "--json").stdout)[0]["promoted"] is True
    shown = json.loads(millrace(state, "ml", "show", "--json").stdout)
    assert shown["version"] == "v0001" and shown["features"] == info["features"]
    text = millrace(state, "ml", "show").stdout
    assert f"inputs ({len(info['features'])}): z, robust_z," in text and "training data" in text
    assert f"{info['training']['readings']:,}" in text  # the summary as a table, numbers readable
    bad = millrace(state, "ml", "promote", "v0042")
    assert bad.returncode == 1 and "no model version 'v0042'" in bad.stderr

    explained = millrace(state, "ml", "explain")
    assert explained.returncode == 0 and "importance per sensor" in explained.stdout
    chart = state / "models" / "v0001" / "importance.png"
    assert chart.is_file() and chart.read_bytes()[:4] == b"\x89PNG"

    frame = simulate_frame(FleetConfig(devices=1, seed=77, start=datetime(2026, 5, 1, tzinfo=UTC)), duration_s=3600)
    wide = frame.pivot(index="timestamp", columns="sensor_type", values="value").reset_index()
    wide["label"] = (frame.groupby("timestamp")["ground_truth"].agg(lambda s: (s != "normal").any())).to_numpy()
    wide["label"] = wide["label"].astype(int)
    path = tmp_path / "wide.csv"
    wide.to_csv(path, index=False, sep="\t")
    out = tmp_path / "scores.parquet"
    done = millrace(
        state,
        "ml",
        "evaluate",
        str(path),
        "--label-column",
        "label",
        "--time-column",
        "timestamp",
        "--output",
        str(out),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["mode"] == "promoted model v0001"
    scores = pd.read_parquet(out)
    assert len(scores) == result["readings"] == len(frame)
    assert int(scores["flag"].sum()) == result["tp"] + result["fp"]
    unlabelled = tmp_path / "unlabelled.csv"
    wide.drop(columns=["label"]).to_csv(unlabelled, index=False)
    missing = millrace(state, "ml", "evaluate", str(unlabelled), "--time-column", "timestamp")
    assert missing.returncode == 1 and "no label column" in missing.stderr


def test_notebook_trains_on_the_store_and_plots(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = load_settings(state_dir=state)
    state.mkdir()
    frame = simulate_frame(FleetConfig(devices=2, seed=21, start=datetime(2026, 4, 1, tzinfo=UTC)), duration_s=2 * 3600)
    rows = frame.assign(interpolated=False)
    for col in READING_COLUMNS:
        if col not in rows:
            rows[col] = None
    store = open_store(settings)
    assert store.upsert_readings(rows[list(READING_COLUMNS)]) == len(frame)

    nb = nbformat.read(ROOT / "examples" / "anomaly_model.ipynb", as_version=4)
    os.environ["MILLRACE_STATE_DIR"] = str(state)
    try:
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        del os.environ["MILLRACE_STATE_DIR"]
    text = "\n".join(
        out.get("text", "") + json.dumps(out.get("data", {}))
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert f"store sqlite {len(frame)} readings from 12 sensors" in text
    assert (state / "models" / "v0001" / "model.json").is_file()
    assert (state / "notebook-importance.png").is_file() and (state / "notebook-anomalies.png").is_file()
    assert "'version': 'v0001'" in text
