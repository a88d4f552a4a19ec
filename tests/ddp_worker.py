"""Run by tests/test_train.py under torchrun: train `tiny` with DDP on CPU (gloo), record its weights."""

import hashlib
import json
import sys
from pathlib import Path

from test_train import tiny_config  # this script's folder, tests/, is first on sys.path

from lsmseg.training.datasets import SyntheticScenes
from lsmseg.training.train import Trainer


def main() -> None:
    output = Path(sys.argv[1])
    config = tiny_config(output, iterations=3, batch_size=4, lr=1e-3, checkpoint_every=100)
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
