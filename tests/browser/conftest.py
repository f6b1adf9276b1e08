"""tests/browser: the real ComfyUI frontend in headless Chromium (marker ``browser``).

``frontend`` runs ``tests/browser/driver.mjs`` against the session's ComfyUI server (the
``comfy`` fixture) and returns its JSON report; screenshots and reports are saved under
``tests/artifacts/browser/`` (git-ignored).
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from host_fixtures import ARTIFACTS, host_venv

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "driver.mjs"
CHROMIUM = Path("/usr/bin/chromium")


def pytest_collection_modifyitems(config, items):
    """Every test under tests/browser gets the ``browser`` marker (and needs the host)."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.host)


class Frontend:
    """Calls the Node driver; ``check(workflow, name, queue=False)`` -> report dict."""

    def __init__(self, url: str, node_modules: Path, workdir: Path):
        self.url = url
        self.node_modules = node_modules
        self.workdir = workdir
        self.out_dir = ARTIFACTS / "browser"
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def check(self, workflow, name: str, queue: bool = False, timeout: float = 120, export_ui=None) -> dict:
        """Load ``workflow`` (dict or path; UI or API format) into the page, optionally queue it.

        The report has ``missing_node_types``, ``errored_nodes``, ``queue`` (status, progress
        events, executed nodes), ``screenshot`` and ``exit_code`` (0 = all fine). ``export_ui``:
        a path to write the graph as the frontend saves it (API -> UI format conversion).
        """
        if isinstance(workflow, (str, Path)):
            wf_path = Path(workflow)
        else:
            wf_path = self.workdir / f"{name}.json"
            wf_path.write_text(json.dumps(workflow, indent=1))
        shot = self.out_dir / f"{name}.png"
        report_path = self.out_dir / f"{name}.json"
        cmd = ["node", str(DRIVER), "--url", self.url, "--workflow", str(wf_path), "--screenshot", str(shot),
               "--report", str(report_path), "--timeout", str(int(timeout)), "--node-modules", str(self.node_modules)]
        if queue:
            cmd.append("--queue")
        if export_ui:
            cmd += ["--export-ui", str(export_ui)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
        try:
            report = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"driver.mjs printed no report (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        report["stderr"] = proc.stderr[-3000:]
        if report.get("exit_code") == 2:  # environment problem, not a finding about the workflow
            raise AssertionError(f"browser driver could not run: {report.get('error')}\n{report['stderr']}")
        return report


@pytest.fixture(scope="session")
def frontend(comfy, tmp_path_factory):
    node_modules = host_venv() / "node" / "node_modules"
    missing = [str(p) for p in (CHROMIUM, node_modules / "playwright-core") if not p.exists()]
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        pytest.fail(f"browser tooling missing: {', '.join(missing)} (run `make venv`)", pytrace=False)
    return Frontend(comfy.url, node_modules, tmp_path_factory.mktemp("browser"))
