"""Today's presets keep their exact outputs after the CAT-Seg import flags were added.

tests/fixtures/reference_logits.safetensors holds what `reference_logits()` returned at commit 2ceae16, before
those flags existed: logits of the `tiny` preset (seeded random weights) and of the committed demo checkpoint,
every 4th pixel. `python tests/test_unchanged_outputs.py` rewrites it — only do that on purpose.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lsmseg.model import build_model, load_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "reference_logits.safetensors"
DEMO_CHECKPOINT = REPO_ROOT / "checkpoints" / "demo.safetensors"
DEMO_CLASSES = ["red circle", "blue square", "green triangle", "grass", "water", "brick wall"]


def _images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reference_logits() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    tiny = build_model("tiny").eval()
    tiny_text = tiny.encode_text([[f"a photo of thing {i}", f"thing number {i}"] for i in range(12)])
    demo = load_checkpoint(DEMO_CHECKPOINT)
    demo_text = demo.encode_text([[f"a photo of a {name}"] * 5 for name in DEMO_CLASSES])
    return {
        "tiny": tiny(_images(2, 64, 1), tiny_text)[..., ::4, ::4].contiguous(),
        "demo": demo(_images(1, 96, 2), demo_text)[..., ::4, ::4].contiguous(),
        "demo_text": demo_text.contiguous(),
    }


def test_tiny_and_demo_logits_equal_those_before_the_catseg_flags() -> None:
    expected = load_file(str(FIXTURE))
    actual = reference_logits()
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        # -inf marks CFM-dropped classes in both; the rest must agree to float rounding.
        torch.testing.assert_close(actual[name], tensor, atol=1e-6, rtol=1e-6, msg=name)


if __name__ == "__main__":
    save_file(reference_logits(), str(FIXTURE))
    print(f"wrote {FIXTURE}")
