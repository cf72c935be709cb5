"""The CI recipe that builds the installers on native runners: here only its shape
(it has not run on GitHub): valid YAML, one job per OS on that OS's runner, each
running this repository's build script for it and keeping what it built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "package.yml"


def _workflow() -> dict[Any, Any]:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def test_each_os_has_its_job_on_its_own_runner_building_with_the_repositorys_script() -> None:
    jobs = _workflow()["jobs"]
    assert set(jobs) == {"linux", "macos", "windows"}
    expected = {
        "linux": ("ubuntu-", "make package", "dist/*.deb"),
        "macos": ("macos-", "packaging/macos/build-app", "dist/*.dmg"),
        "windows": ("windows-", "packaging\\windows\\build.ps1", "dist/*-win64.exe"),
    }
    for name, (runner, build, artifact) in expected.items():
        job = jobs[name]
        assert str(job["runs-on"]).startswith(runner), name
        assert build in _runs(job), name
        assert job["steps"][0]["uses"].startswith("actions/checkout@"), name
        uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith(
            "actions/upload-artifact@")]
        assert uploads and artifact in uploads[-1]["with"]["path"], name


def test_the_scripts_the_recipe_runs_are_in_the_repository() -> None:
    for script in ("packaging/macos/build-app", "packaging/windows/build.ps1",
                   "packaging/linux/build-deb", "packaging/linux/test-deb",
                   "scripts/install-system-deps"):
        assert (ROOT / script).is_file(), script
    assert "make test-deb" in _runs(_workflow()["jobs"]["linux"])


def test_the_recipe_runs_on_release_tags_or_by_hand_with_read_only_contents() -> None:
    workflow = _workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"push", "workflow_dispatch"}
    assert triggers["push"]["tags"] == ["v*"]
    assert workflow["permissions"] == {"contents": "read"}


def test_no_step_condition_names_a_secret() -> None:
    # GitHub refuses a workflow whose step `if:` reads secrets; a job env says if one is set
    for name, job in _workflow()["jobs"].items():
        for step in job["steps"]:
            assert "secrets." not in str(step.get("if", "")), (name, step.get("name"))
