"""The model directory loads in optimum's ORTModelForCausalLM, and generates as torch does."""

import pytest
import torch

pytestmark = pytest.mark.slow  # optimum, a peer: CI runs these, the fast tier does not

optimum_onnxruntime = pytest.importorskip("optimum.onnxruntime")


def test_optimum_loads_the_directory(tiny_model, tiny_checkpoint, torch_model):
    ort_model = optimum_onnxruntime.ORTModelForCausalLM.from_pretrained(tiny_model, use_cache=True)
    reference = torch_model(tiny_checkpoint)
    ids = torch.tensor([[101, 300, 400, 500, 600]])
    with torch.no_grad():
        ours = ort_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        theirs = reference(input_ids=ids).logits
    assert (ours - theirs).abs().max() <= 1e-3
    kwargs = dict(max_new_tokens=24, do_sample=False, eos_token_id=102, pad_token_id=0)
    assert torch.equal(ort_model.generate(ids, **kwargs), reference.generate(ids, **kwargs))
