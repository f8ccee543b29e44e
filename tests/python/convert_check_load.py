"""The Python side of tests/convert.rs: loads what `pytorch-saver convert`
wrote with the real tools (safetensors, transformers, pytorch_saver) and
compares it with the original input, bit for bit.

Input (stdin, JSON): {"check": CHECK, ...}; prints what the check found.
Checks:
- "safetensors": {"original", "converted"}: both files' tensors by name
  (dtype and bytes equal) and the converted file's metadata;
- "bert_container": {"original" (a save_pretrained dir), "converted"}:
  ModelContainer().load rebuilds the model; outputs on a fixed input;
- "bert_hf": {"original", "converted"} (both directories): from_pretrained
  of each, state dicts and outputs;
- "resnet_container": {"state_dict" (torch.save file), "converted"};
- "adam_container": {"training_dict", "converted"}: the optimizer state
  ModelContainer().load rebuilt against the saved one, by parameter;
- "load_error": {"converted"}: the message ModelContainer().load raises."""

import json
import sys
from typing import Any

import pytorch_saver
import torch


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaNs included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    if a.dtype == torch.bool:
        return bool(torch.equal(a, b))
    return bool(torch.equal(a.view(torch.uint8), b.view(torch.uint8)))


def same_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """The names where two state dicts differ (missing on either side too)."""
    return sorted(n for n in set(a) | set(b) if n not in a or n not in b or not same(a[n], b[n]))


def check_safetensors(spec: dict[str, Any]) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    original, converted = load_file(spec["original"]), load_file(spec["converted"])
    with safe_open(spec["converted"], framework="pt") as f:
        metadata = f.metadata()
    return {
        "different": same_dicts(original, converted),
        "count": len(converted),
        "metadata": metadata,
    }


def bert_input() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 5, 9, 33, 2, 0], [7, 63, 4, 4, 11, 3]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def bert_outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(**bert_input())
    return [out.last_hidden_state, out.pooler_output]


def check_bert_container(spec: dict[str, Any]) -> dict[str, Any]:
    import transformers.models.bert.modeling_bert  # noqa: F401 - resolves the class by name
    from transformers import BertModel

    _, objects = pytorch_saver.ModelContainer().load(spec["converted"])
    original = BertModel.from_pretrained(spec["original"])
    outputs = zip(bert_outputs(objects.model), bert_outputs(original), strict=True)
    return {
        "class": type(objects.model).__name__,
        "outputs_equal": all(same(a, b) for a, b in outputs),
        "different": same_dicts(objects.model.state_dict(), original.state_dict()),
    }


def check_bert_hf(spec: dict[str, Any]) -> dict[str, Any]:
    from transformers import BertModel

    original = BertModel.from_pretrained(spec["original"])
    converted = BertModel.from_pretrained(spec["converted"])
    outputs = zip(bert_outputs(converted), bert_outputs(original), strict=True)
    return {
        "different": same_dicts(converted.state_dict(), original.state_dict()),
        "outputs_equal": all(same(a, b) for a, b in outputs),
        "hidden_size": converted.config.hidden_size,
    }


def check_resnet_container(spec: dict[str, Any]) -> dict[str, Any]:
    from torchvision.models.resnet import resnet18

    _, objects = pytorch_saver.ModelContainer().load(spec["converted"])
    original = resnet18(num_classes=10)
    original.load_state_dict(torch.load(spec["state_dict"], weights_only=True))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    objects.model.eval()
    original.eval()
    with torch.no_grad():
        equal = same(objects.model(x), original(x))
    return {
        "class": type(objects.model).__name__,
        "outputs_equal": equal,
        "different": same_dicts(objects.model.state_dict(), original.state_dict()),
    }


def check_adam_container(spec: dict[str, Any]) -> dict[str, Any]:
    import torchvision.models.resnet  # noqa: F401 - resolves the class by name

    _, objects = pytorch_saver.ModelContainer().load(spec["converted"])
    saved = torch.load(spec["training_dict"], weights_only=True)
    optimizer = objects.optimizer
    assert optimizer is not None, "the converted file rebuilt no optimizer"
    # The saved state by parameter index, in model.parameters() order, as
    # the rebuilt optimizer's over the same model.
    params = list(objects.model.parameters())
    different = []
    for i, p in enumerate(params):
        for key, value in saved["optimizer"]["state"][i].items():
            if not same(optimizer.state[p][key], value):
                different.append(f"{i}.{key}")
    return {
        "class": type(optimizer).__name__,
        "states": len(optimizer.state),
        "different": different,
        "lr": optimizer.param_groups[0]["lr"],
        "model_different": same_dicts(objects.model.state_dict(), saved["model"]),
    }


def check_load_error(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        pytorch_saver.ModelContainer().load(spec["converted"])
    except pytorch_saver.PytorchSaverError as e:
        return {"error": str(e), "type": type(e).__name__}
    return {"error": None}


CHECKS = {
    "safetensors": check_safetensors,
    "bert_container": check_bert_container,
    "bert_hf": check_bert_hf,
    "resnet_container": check_resnet_container,
    "adam_container": check_adam_container,
    "load_error": check_load_error,
}


def main() -> None:
    spec = json.load(sys.stdin)
    json.dump(CHECKS[spec["check"]](spec), sys.stdout)


if __name__ == "__main__":
    main()
