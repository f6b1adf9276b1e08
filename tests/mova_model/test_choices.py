"""`check_choice`: the one check behind every combo value (issue 9)."""
import pytest

from mova_model.choices import ChoiceError, check_choice


def test_allowed_value_is_returned():
    assert check_choice("dtype", "bf16", ["auto", "bf16"]) == "bf16"


def test_bogus_value_lists_the_allowed_ones():
    with pytest.raises(ChoiceError) as info:
        check_choice("dtype", "bogus", ["auto", "bf16", "fp16", "fp32"], where="MOVA Loader: ")
    assert str(info.value) == "MOVA Loader: dtype = 'bogus' is not allowed; choose one of: 'auto', 'bf16', 'fp16', 'fp32'."
    assert isinstance(info.value, ValueError)


def test_empty_list_says_so_with_the_hint():
    with pytest.raises(ChoiceError) as info:
        check_choice("lora_name", "x.safetensors", [], hint="Each is a file under models/loras.")
    assert str(info.value) == ("lora_name = 'x.safetensors' is not allowed: there is nothing to choose from yet. "
                               "Each is a file under models/loras.")
