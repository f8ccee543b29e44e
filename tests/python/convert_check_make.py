"""The inputs of tests/convert.rs, made by the real tools: safetensors'
save_file, transformers' save_pretrained, torch.save.

Input (stdin, JSON): {"kind": KIND, "path": PATH, ...}; prints {} or what
the kind reports. Kinds:
- "safetensors": tensors of every dtype the format holds, with metadata;
- "bert": a tiny BertModel saved with save_pretrained in >= 2 shards;
- "resnet_state_dict": torch.save of resnet18(num_classes=10).state_dict();
- "resnet_training_dict": torch.save of {"model", "optimizer" (Adam after
  two steps), "epoch"};
- "hostile": torch.save of an object whose unpickling runs os.system,
  which would create spec["canary"]."""

import json
import os
import sys
from typing import Any

import torch


def make_safetensors(spec: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    tensors = {
        "f64": torch.randn(3, 2, dtype=torch.float64, generator=g),
        "f32": torch.randn(4, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.arange(-3, 3, dtype=torch.int64),
        "i32": torch.arange(5, dtype=torch.int32),
        "i16": torch.tensor([-2, 9], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    save_file(tensors, spec["path"], metadata={"source": "tests/convert.rs", "format": "pt"})
    return {}


def bert_config() -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )


def make_bert(spec: dict[str, Any]) -> dict[str, Any]:
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(bert_config())
    model.save_pretrained(spec["path"], max_shard_size="20KB")
    shards = [n for n in os.listdir(spec["path"]) if n.endswith(".safetensors")]
    return {"shards": len(shards)}


def resnet() -> torch.nn.Module:
    from torchvision.models.resnet import resnet18

    torch.manual_seed(0)
    return resnet18(num_classes=10)


def make_resnet_state_dict(spec: dict[str, Any]) -> dict[str, Any]:
    model = resnet()
    # Buffers that differ from their initial values, as after training.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    torch.save(model.state_dict(), spec["path"])
    return {}


def make_resnet_training_dict(spec: dict[str, Any]) -> dict[str, Any]:
    model = resnet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 32, 32, generator=g)).sum().backward()
        optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 2}
    torch.save(state, spec["path"])
    return {}


class RunsACommand:
    def __init__(self, canary: str) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.canary}",))


def make_hostile(spec: dict[str, Any]) -> dict[str, Any]:
    torch.save({"weight": torch.zeros(2), "payload": RunsACommand(spec["canary"])}, spec["path"])
    return {}


MAKERS = {
    "safetensors": make_safetensors,
    "bert": make_bert,
    "resnet_state_dict": make_resnet_state_dict,
    "resnet_training_dict": make_resnet_training_dict,
    "hostile": make_hostile,
}


def main() -> None:
    spec = json.load(sys.stdin)
    json.dump(MAKERS[spec["kind"]](spec), sys.stdout)


if __name__ == "__main__":
    main()
