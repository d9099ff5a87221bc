"""Probe (docs/ablations.md §5): one set of T-EMDE planes for both sides of vse-small, each side standardised on
its own tokens. `python benchmarks/vse_tied_planes_probe.py OUT [DATA]` (DATA: a `temde prepare all` folder;
default /tmp/data-all-cold). 200 steps at batch 128, seed 0; prints the best dev rsum."""
import sys
from temde.training.loop import TrainSettings, train

tied = []

def tie(model, epoch):
    if tied:
        return
    image_pool, caption_pool = model.image_pool, model.caption_pool
    caption_pool.planes = image_pool.planes  # the same Parameter: one set of planes, gradients of both sides
    caption_pool.bias = image_pool.bias
    tied.append(epoch)

out = sys.argv[1]
data = sys.argv[2] if len(sys.argv) > 2 else "/tmp/data-all-cold"
result = train(TrainSettings(data=data, out=out, model="vse-small", pooling="temde", epochs=1,
                             batch_size=128, max_steps_per_epoch=200, seed=0, progress=False, force=True,
                             on_epoch_start=tie, validate_data=False))
print("tied at epoch", tied, "best dev rsum", result["best_rsum"])
