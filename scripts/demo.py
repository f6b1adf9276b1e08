"""End-to-end demo: image -> video + audio through a real ComfyUI, with a tiny random MOVA model.

usage: python scripts/demo.py [--venv .venv] [--out demo-output] [--workflow workflows/api/mova_i2va_api.json]
                              [--timeout 1800] [--keep-base]

1. writes a tiny random-weight checkpoint in the official MOVA layout with
   ``python -m mova_model tiny-checkpoint <base>/models/mova/mova-tiny``;
2. starts ComfyUI (``VENV/comfyui``, from ``scripts/install_host.sh``) headless on CPU with
   this pack linked into ``<base>/custom_nodes``;
3. uploads a generated first-frame PNG, points every ``LoadImage`` node of the API-format
   workflow at it and the ``checkpoint`` input at the tiny model, sets a tiny size
   (``--width/--height/--frames/--steps``), queues the workflow, follows it on the websocket,
   downloads the mp4;
4. stops the server and prints the mp4's path as the last line of stdout.

Progress goes to stderr (``logging``), including ``demo_seconds=...``. Exit codes: 0 ok;
1 setup (venv, workflow file, checkpoint); 2 server start; 3 the run did not succeed;
4 the run produced no mp4.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfy_host  # noqa: E402

logger = logging.getLogger("mova.demo")
CHECKPOINT_NAME = "mova-tiny"
FIRST_FRAME_NAME = "mova_demo_first_frame.png"


def default_workflow() -> Path:
    """The pack's image-to-video+audio API workflow (``workflows/api/`` or ``workflows/``)."""
    for candidate in (REPO_ROOT / "workflows" / "api" / "mova_i2va_api.json", REPO_ROOT / "workflows" / "mova_i2va_api.json"):
        if candidate.is_file():
            return candidate
    return REPO_ROOT / "workflows" / "api" / "mova_i2va_api.json"


def prepare_workflow(path: Path, image_name: str, settings: dict) -> dict:
    """Load the API-format workflow and adapt it to the demo run.

    Every ``LoadImage`` node's ``image`` becomes ``image_name``; on every node, a literal
    (unlinked) input named like a key of ``settings`` (``checkpoint``, ``width``, ``height``,
    ``frames``, ``steps``) is replaced by that value, so the shipped workflow runs on the tiny
    checkpoint at a CPU-friendly size.
    """
    workflow = json.loads(path.read_text())
    if not isinstance(workflow, dict) or not all(isinstance(n, dict) and "class_type" in n for n in workflow.values()):
        raise ValueError(f"{path} is not an API-format workflow ({{id: {{class_type, inputs}}}})")
    loaders = [n for n in workflow.values() if n["class_type"] == "LoadImage"]
    if not loaders:
        raise ValueError(f"{path} has no LoadImage node to take the first frame")
    for node in workflow.values():
        inputs = node.setdefault("inputs", {})
        if node["class_type"] == "LoadImage":
            inputs["image"] = image_name
        for key, value in settings.items():
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
    if not any("checkpoint" in n["inputs"] for n in workflow.values()):
        raise ValueError(f"{path} has no node with a `checkpoint` input to point at the tiny checkpoint")
    return workflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=str(REPO_ROOT / ".venv"), help="host venv made by scripts/install_host.sh")
    parser.add_argument("--out", default=str(REPO_ROOT / "demo-output"), help="where the mp4 and the ComfyUI base go")
    parser.add_argument("--workflow", default=None, help="API-format workflow (default: the pack's I2VA one)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed for the run itself")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("W", "H"), help="first-frame size")
    parser.add_argument("--width", type=int, default=64, help="video width for the run (px)")
    parser.add_argument("--height", type=int, default=64, help="video height for the run (px)")
    parser.add_argument("--frames", type=int, default=5, help="number of video frames")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps")
    parser.add_argument("--keep-base", action="store_true", help="keep the ComfyUI base folder of an earlier demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s", stream=sys.stderr)

    t0 = time.monotonic()
    venv = Path(args.venv).absolute()
    out = Path(args.out).absolute()
    base = out / "comfy-base"
    workflow_path = Path(args.workflow) if args.workflow else default_workflow()
    if not (venv / "comfyui" / "main.py").is_file():
        logger.error("no ComfyUI in %s: run `make venv` first", venv)
        return 1
    if not workflow_path.is_file():
        logger.error("workflow %s not found", workflow_path)
        return 1
    if base.exists() and not args.keep_base:
        shutil.rmtree(base)
    base.mkdir(parents=True, exist_ok=True)

    # 1. tiny checkpoint
    ckpt_dir = base / "models" / "mova" / CHECKPOINT_NAME
    t = time.monotonic()
    try:
        comfy_host.write_tiny_checkpoint(venv / "bin" / "python", REPO_ROOT, ckpt_dir)
    except (comfy_host.HostError, OSError) as err:
        logger.error("%s", err)
        return 1
    logger.info("tiny checkpoint at %s (%.1fs)", ckpt_dir, time.monotonic() - t)

    # 2. server
    server = comfy_host.ComfyServer(venv=venv, base=base, packs=[REPO_ROOT])
    try:
        server.start(timeout=300)
    except comfy_host.HostError as err:
        logger.error("%s", err)
        return 2
    logger.info("ComfyUI up at %s after %.1fs (log %s)", server.url, server.startup_seconds, server.log_path)
    try:
        client = comfy_host.ComfyClient(server.url)
        # 3. first frame, workflow, run
        frame = comfy_host.write_test_image(out / FIRST_FRAME_NAME, *args.size)
        image_name = client.upload_image(frame)
        try:
            settings = {"checkpoint": CHECKPOINT_NAME, "width": args.width, "height": args.height,
                        "frames": args.frames, "steps": args.steps}
            workflow = prepare_workflow(workflow_path, image_name, settings)
            logger.info("workflow %s with %s", workflow_path.name, settings)
        except (ValueError, json.JSONDecodeError) as err:
            logger.error("%s", err)
            return 1
        peak_rss = [server.rss_bytes()]

        def on_event(event: dict) -> None:
            if event["type"] == "progress":
                data = event["data"]
                logger.info("progress %s/%s (node %s)", data.get("value"), data.get("max"), data.get("node"))
            if server.alive():
                peak_rss[0] = max(peak_rss[0], server.rss_bytes())

        result = client.run(workflow, timeout=args.timeout, out_dir=out / "outputs", on_event=on_event)
        logger.info(
            "run %s in %.1fs: %d progress messages, %d previews, peak server RSS %.0f MiB",
            result.status, result.seconds, result.progress_count, result.preview_count, peak_rss[0] / 2**20,
        )
        if result.status != "success":
            logger.error("workflow %s: %s", result.status, result.error or result.node_errors)
            logger.error("server log tail:\n%s", server.log_tail(30))
            return 3
    finally:
        server.stop()

    videos = [p for p in result.outputs if p.suffix.lower() == ".mp4"]
    if not videos:
        logger.error("the run saved no mp4 (outputs: %s)", [str(p) for p in result.outputs])
        return 4
    final = out / videos[0].name
    shutil.copyfile(videos[0], final)
    logger.info("demo_seconds=%.1f", time.monotonic() - t0)
    sys.stdout.write(f"{final}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
