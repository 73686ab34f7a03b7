"""The GPU acceptance script's dry run: the same steps on the CPU at tiny sizes, so it cannot rot."""

import json

from benchmarks.gpu_acceptance import main


def test_dry_run_runs_every_step_and_writes_json_and_markdown(tmp_path) -> None:
    report = main(["--dry-run", "--json", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "a.md")])
    assert {name: step["status"] for name, step in report["steps"].items()} == dict.fromkeys(
        ("guided_step", "memory", "run_twice", "ray", "flow_fps"), "ok")
    assert report["steps"]["run_twice"]["same_frames"] and report["steps"]["ray"]["same_frames_as_local"]
    assert [row["variant"] for row in report["steps"]["memory"]["rows"]] == ["baseline", "checkpoint"]
    assert all(row["predicted_bytes"] > 0 for row in report["steps"]["memory"]["rows"])
    assert json.loads((tmp_path / "a.json").read_text())["dry_run"] is True
    text = (tmp_path / "a.md").read_text()
    assert "| baseline |" in text and "same frames: yes" in text and "frames/s" in text
