"""Every combo input of every MOVA node refuses a value outside its options, listing them (issue 9).

ComfyUI 0.3.75 does not check V3 combo values, so `dtype="bogus"` reached the loader as a bare
`KeyError: 'bogus'` and `backend="bogus"` was quietly treated as openai_compatible. The check runs first in
each node's `execute`, so the other inputs can be placeholders here.
"""
import pytest


@pytest.fixture(autouse=True)
def one_checkpoint(node_module, tmp_path, monkeypatch):
    """A `models/mova` with one checkpoint folder and a `models/loras` with one file, so the file-backed combos
    have an option each."""
    node_module("paths")  # imports ComfyUI and the pack
    import folder_paths

    (tmp_path / "mova" / "mova-tiny").mkdir(parents=True)
    (tmp_path / "mova" / "mova-tiny" / "model_index.json").write_text("{}")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "mova", ([str(tmp_path / "mova")], set()))
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style.safetensors").write_bytes(b"")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path / "loras")], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    yield
    folder_paths.filename_list_cache.clear()


def _all_nodes(node_module):
    import comfyui_mova

    return comfyui_mova.collect_nodes()


def _combo_cases(node_module):
    from comfy_api.latest import io

    cases = []
    for node_cls in _all_nodes(node_module):
        schema = node_cls.define_schema()
        for item in schema.inputs:
            if isinstance(item, io.Combo.Input):
                cases.append((node_cls, schema, item))
    return cases


def test_the_nodes_have_the_expected_combos(node_module):
    found = {(schema.node_id, item.id) for _, schema, item in _combo_cases(node_module)}
    assert found == {
        ("MovaLoader", "checkpoint"), ("MovaLoader", "dtype"), ("MovaLoader", "device"),
        ("MovaLoader", "memory_mode"), ("MovaLoader", "weights"), ("MovaLoader", "attention"),
        ("MovaLoader", "batch_guidance"), ("MovaLoraLoader", "lora_name"), ("MovaLoraLoader", "expert"),
        ("MovaGuidance", "preset"), ("MovaAudioDriver", "mode"), ("MovaVideoDriver", "mode"), ("MovaExtend", "hold_mode"), ("MovaMultiGPU", "split"),
        ("MovaTrainLora", "targets"), ("MovaTrainLora", "experts"), ("MovaTrainLora", "weights"),
        ("MovaPromptEnhancer", "backend"), ("MovaPromptEnhancer", "local_model"), ("MovaPromptEnhancer", "on_failure"),
        ("MovaJointSampler", "solver"), ("MovaExtend", "solver"), ("MovaSigmas", "solver"),
    }  # fmt: skip


def test_every_combo_refuses_a_bogus_value_with_the_allowed_ones(node_module):

    for node_cls, schema, combo in _combo_cases(node_module):
        kwargs = {item.id: None for item in schema.inputs}
        for _, other_schema, other in _combo_cases(node_module):
            if other_schema.node_id == schema.node_id and other.options:
                kwargs[other.id] = other.default if other.default is not None else other.options[0]
        kwargs[combo.id] = "bogus"
        with pytest.raises(ValueError) as info:
            node_cls.execute(**kwargs)
        message = str(info.value)
        assert message.startswith(f"{schema.display_name}: {combo.id} = 'bogus' is not allowed; choose one of: "), message
        for option in combo.options:
            assert repr(option) in message, (schema.node_id, combo.id, message)



def test_the_issue_examples(node_module):
    loader = node_module("loader")
    with pytest.raises(ValueError) as info:
        loader.MovaLoader.execute(checkpoint="mova-tiny", dtype="bogus", device="auto")
    assert "MOVA Loader: dtype = 'bogus' is not allowed; choose one of: 'auto', 'bf16', 'fp16', 'fp32'." in str(info.value)
    prompt = node_module("prompt")
    with pytest.raises(ValueError, match="backend = 'bogus' is not allowed; choose one of: 'openai_compatible', "
                                         "'local_transformers'"):
        prompt.MovaPromptEnhancer.execute(
            text="x", backend="bogus", endpoint_url="http://127.0.0.1:9/v1", model_name="m", api_key_env="",
            timeout_s=1, local_model="(none)", no_subtitles=True, on_failure="error", max_new_tokens=16,
            temperature=0.0, rewrite_seed=0)
