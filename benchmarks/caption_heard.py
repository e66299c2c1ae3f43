"""How much each condition lowers a bundled-format model's denoising loss: is the caption heard? (issue 13)

    python benchmarks/caption_heard.py [PARTS]     # default: the bundled weights

64 held-out world scenes (seeds far from any cache), encoded as the trainer encodes them; the loss of the model's
own parameterisation for four draws of noise and timestep per scene, with no condition, the caption alone and
every condition, the same draws in each setting (training/composer.py's step with fixed dropout outcomes).
Printed: the mean loss, per quarter of the timesteps, and on the objects alone (each latent position weighed by
its share covered by objects: where a caption's colours and shapes must show). A caption that is heard lowers the
loss against no condition, most at the high timesteps where the layout is decided, and on its objects.
"""

import sys
from pathlib import Path

import torch


def main() -> None:
    torch.set_num_threads(1)
    from recomposer.models.bundled import (WEIGHTS, load_bundled_backbone, load_bundled_composer,
                                           load_bundled_image_encoder)
    from recomposer.training.composer import ComposerTraining, encode_scenes, foreground_share, rows_batch
    from recomposer.training.dropout import DropoutRates

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else WEIGHTS
    backbone = load_bundled_backbone(torch.device("cpu"), torch.float32, folder)
    rows = encode_scenes(backbone, load_bundled_image_encoder(folder=folder), range(2_000_000, 2_000_064), 64)
    batch = rows_batch(rows, backbone.mask_padding)
    model = ComposerTraining(backbone, load_bundled_composer(folder), kinds=tuple(sorted(batch["present"]))).eval()
    settings = {"none": DropoutRates(all_dropped=1.0, all_kept=0.0),
                "caption": DropoutRates(all_dropped=0.0, all_kept=0.0, caption_alone=1.0),
                "all": DropoutRates(all_dropped=0.0, all_kept=1.0)}
    quarters = [(0, 250), (250, 500), (500, 750), (750, 1000)]
    with torch.no_grad():
        for name, rates in settings.items():
            model.rates = rates
            losses, steps, on_objects = [], [], []
            for seed in range(4):
                result = model.step(batch, torch.Generator().manual_seed(seed))
                error = (result.prediction - result.target).square()  # (B, C, h, w)
                losses.append(error.flatten(1).mean(1))
                steps.append(result.timesteps)
                f = foreground_share(batch["instance_labels"], tuple(error.shape[-2:]))  # (B, 1, h, w)
                on_objects.append((error * f).sum() / (f.sum() * error.shape[1]))
            loss, t = torch.cat(losses), torch.cat(steps)
            print(f"{name:8s} {loss.mean():.4f}  " + "  ".join(f"t {a}-{b}: {loss[(t >= a) & (t < b)].mean():.4f}"
                                                          for a, b in quarters)
                  + f"  objects: {torch.stack(on_objects).mean():.4f}")


if __name__ == "__main__":
    main()
