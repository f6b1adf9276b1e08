#!/usr/bin/env python3
"""Regenerate the UI-format workflows (`workflows/*.json`, what users drag into ComfyUI and what the template
browser lists) from the API-format sources (`workflows/api/*_api.json`) through the real ComfyUI frontend.

    .venv/bin/python scripts/export_ui_workflows.py [--venv .venv]

Starts a headless ComfyUI with this pack and a tiny checkpoint, loads each API workflow into the frontend in
headless Chromium (tests/browser/driver.mjs) and saves the graph as the frontend serializes it, with the
seed's "control after generate" set to fixed.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import comfy_host  # noqa: E402

logger = logging.getLogger("export_ui_workflows")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".venv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = Path(tempfile.mkdtemp(prefix="mova-export-"))
    server = comfy_host.ComfyServer(venv=args.venv.resolve(), base=base, packs=[REPO])
    server.start(timeout=180)
    try:
        comfy_host.write_tiny_checkpoint(server.python, REPO, server.models_dir / "mova" / "MOVA-360p")
        client = comfy_host.ComfySession(server, out_dir=base / "downloads")
        image = comfy_host.write_test_image(base / "mova_first_frame.png", 640, 352)
        client.upload_image(image, name="mova_first_frame.png")
        last = comfy_host.write_test_image(base / "mova_last_frame.png", 352, 640)
        client.upload_image(last, name="mova_last_frame.png")
        for source in sorted((REPO / "workflows" / "api").glob("*_api.json")):
            target = REPO / "workflows" / source.name.replace("_api.json", ".json")
            cmd = ["node", str(REPO / "tests" / "browser" / "driver.mjs"), "--url", server.url, "--workflow", str(source),
                   "--export-ui", str(target), "--node-modules", str(args.venv / "node" / "node_modules")]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                logger.error("%s: driver exit %d\n%s\n%s", source.name, done.returncode, done.stdout, done.stderr)
                return 1
            data = json.loads(target.read_text())
            for node in data.get("nodes", []):  # ship fixed seeds: the frontend defaults them to "randomize"
                values = node.get("widgets_values")
                if isinstance(values, list):
                    node["widgets_values"] = ["fixed" if v == "randomize" else v for v in values]
            target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            logger.info("wrote %s (%d nodes)", target.relative_to(REPO), len(data.get("nodes", [])))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
