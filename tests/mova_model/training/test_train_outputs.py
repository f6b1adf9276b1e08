"""Where a training run writes (`files.choose_output`): never over a user's file unless asked, continuing an
unfinished run with the same settings, else the next free name (issue 17, item 2); state files are never
LoRA names (item 7)."""

import torch
from safetensors.torch import save_file

from mova_model.training.files import STATE_FORMAT, choose_output, is_state_file, state_path_for

IDENTITY = {"rank": 4, "seed": 1, "steps": 10}


def write_state(path, step, identity=IDENTITY):
    import json

    save_file({"rng": torch.zeros(1)}, str(path), {"format": STATE_FORMAT, "step": str(step),
                                                   "identity": json.dumps(identity)})


def test_a_free_name_is_used_as_is(tmp_path):
    choice = choose_output(tmp_path / "x.safetensors", IDENTITY, 10)
    assert choice.lora == tmp_path / "x.safetensors" and choice.resume is None and choice.note == ""


def test_an_existing_file_is_kept_and_the_next_free_name_is_used(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"mine")
    choice = choose_output(tmp_path / "x.safetensors", IDENTITY, 10)
    assert choice.lora == tmp_path / "x_2.safetensors" and choice.resume is None
    assert "x.safetensors already exists and was kept (not resumed: no training state beside it)" in choice.note
    replaced = choose_output(tmp_path / "x.safetensors", IDENTITY, 10, overwrite=True)
    assert replaced.lora == tmp_path / "x.safetensors" and "overwrite is on" in replaced.note


def test_an_unfinished_run_with_the_same_settings_is_continued_also_under_a_name_chosen_before(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"mine")
    (tmp_path / "x_2.safetensors").write_bytes(b"partial")
    write_state(state_path_for(tmp_path / "x_2.safetensors"), 4)
    choice = choose_output(tmp_path / "x.safetensors", IDENTITY, 10)
    assert choice.lora == tmp_path / "x_2.safetensors" and choice.resume == state_path_for(choice.lora)
    assert "from its step 4" in choice.note
    other = choose_output(tmp_path / "x.safetensors", dict(IDENTITY, seed=2), 10)
    assert other.lora == tmp_path / "x_3.safetensors" and other.resume is None
    assert choose_output(tmp_path / "x.safetensors", IDENTITY, 10, resume=False).lora == tmp_path / "x_3.safetensors"


def test_a_finished_run_or_a_legacy_state_name(tmp_path):
    write_state(state_path_for(tmp_path / "done.safetensors"), 10)
    (tmp_path / "done.safetensors").write_bytes(b"")
    assert choose_output(tmp_path / "done.safetensors", IDENTITY, 10).lora == tmp_path / "done_2.safetensors"
    (tmp_path / "old.safetensors").write_bytes(b"")
    write_state(tmp_path / "old.state.safetensors", 3)  # how earlier versions named the state
    assert choose_output(tmp_path / "old.safetensors", IDENTITY, 10).resume == tmp_path / "old.state.safetensors"
    assert is_state_file("mova/old.state.safetensors") and is_state_file("a.train-state")
    assert not is_state_file("mova/old.safetensors")
