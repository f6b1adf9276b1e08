"""Unit tests of the host harness helpers that need no server."""
import os

import comfy_host

FAILED_LOG = """
Traceback (most recent call last):
ModuleNotFoundError: No module named 'einops'
Cannot import /tmp/base/custom_nodes/comfyui-mova module for custom nodes: No module named 'einops'

Import times for custom nodes:
   0.0 seconds: /tmp/base/custom_nodes/other-pack
   0.2 seconds (IMPORT FAILED): /tmp/base/custom_nodes/comfyui-mova
"""

OK_LOG = """
Import times for custom nodes:
   0.0 seconds (IMPORT FAILED): /tmp/base/custom_nodes/comfyui-mova-extras
   0.3 seconds: /tmp/base/custom_nodes/comfyui-mova
"""


def test_import_failure_detected_for_the_named_pack_only():
    assert comfy_host.pack_import_failures(FAILED_LOG, ["comfyui-mova", "other-pack"]) == ["comfyui-mova"]


def test_similar_pack_name_is_not_confused():
    assert comfy_host.pack_import_failures(OK_LOG, ["comfyui-mova"]) == []
    assert comfy_host.pack_import_failures(OK_LOG, ["comfyui-mova-extras"]) == ["comfyui-mova-extras"]


def test_rss_of_this_process():
    assert comfy_host.rss_bytes(os.getpid()) > 1 << 20


def test_free_port_is_bindable():
    import socket

    port = comfy_host.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_test_image(tmp_path):
    from PIL import Image

    path = comfy_host.write_test_image(tmp_path / "a.png", 10, 7)
    with Image.open(path) as img:
        assert img.size == (10, 7)
        assert img.getpixel((0, 0)) == (0, 0, 128) and img.getpixel((9, 6)) == (255, 255, 128)
