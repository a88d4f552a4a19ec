"""Run by tests/test_train.py under torchrun: train `tiny` with DDP on CPU (gloo), record its weights."""

import hashlib
import json
import sys
from pathlib import Path

from training.datasets import SyntheticScenes
from training.train import TrainConfig, Trainer


def main() -> None:
    output = Path(sys.argv[1])
    config = TrainConfig(
        preset="tiny",
        clip_pretrained=None,
        iterations=3,
        batch_size=4,
        lr=1e-3,
        num_workers=0,
        log_every=1,
        checkpoint_every=100,
        output_dir=str(output),
        device="cpu",
    )
    trainer = Trainer(config, dataset=SyntheticScenes("train", num_images=8, image_size=64, seed=1))
    try:
        trainer.fit()
        digest = hashlib.sha256()
        for name, tensor in sorted(trainer.model.state_dict().items()):
            digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
        rank = trainer.distributed.rank
        (output / f"rank{rank}.json").write_text(
            json.dumps({"world_size": trainer.distributed.world_size, "weights": digest.hexdigest()})
        )
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
