"""CUDA smoke test: the sketch core, every pool and both hosts run forward/backward on the GPU, match the CPU,
and a few AMP training steps stay finite. Run by benchmarks/gpu_record.sh; exits non-zero on any mismatch."""
import torch

from temde import DLSH, TEMDE
from temde.models import create_model
from temde.pooling import list_pools, make_pool
from temde.training.loss import triplet_loss

assert torch.cuda.is_available(), "no CUDA device"
cuda = torch.device("cuda")
torch.manual_seed(0)

x = torch.randn(4000, 64)
dlsh = DLSH(8, 5).fit(x)
gpu_dlsh = DLSH(8, 5).fit(x.to(cuda))
# Fits on two devices round medians differently, so a vector on a plane may flip: allow 0.1% disagreement.
agreement = (gpu_dlsh.codes(x.to(cuda)).cpu() == dlsh.codes(x)).float().mean().item()
assert agreement > 0.999, f"DLSH codes on CUDA agree with the CPU on only {agreement:.4f}"
hard = TEMDE.from_dlsh(gpu_dlsh, temperature=1e-6)
assert torch.equal(hard.assignments(x.to(cuda)).argmax(-1), gpu_dlsh.codes(x.to(cuda))), "T-EMDE hard limit on CUDA"
print("sketch core on CUDA: ok")

tokens, mask = torch.randn(16, 36, 256), torch.rand(16, 36) > 0.2
for kind in list_pools():
    torch.manual_seed(1)
    cpu_pool = make_pool(kind, 256).eval()
    gpu_pool = make_pool(kind, 256).eval()
    gpu_pool.load_state_dict(cpu_pool.state_dict())
    gpu_pool.to(cuda)
    with torch.no_grad():
        diff = (gpu_pool(tokens.to(cuda), mask.to(cuda)).cpu() - cpu_pool(tokens, mask)).abs().max().item()
    gpu_pool.train()
    out = gpu_pool(tokens.to(cuda).requires_grad_(), mask.to(cuda))
    out.sum().backward()
    print(f"pool {kind:9s} CUDA vs CPU max diff {diff:.2e}; backward ok")
    assert diff < 1e-3

for head in ("saf", "sgr"):
    for pooling in ("attention", "temde"):
        model = create_model(f"{head}-small", pooling=pooling, vocab_size=1000).to(cuda)
        opt = torch.optim.Adam(model.parameters(), 2e-4)
        images = torch.randn(32, 49, 1280, device=cuda).relu()
        toks = torch.randint(4, 1000, (32, 14), device=cuda)
        lengths = torch.randint(5, 15, (32,), device=cuda)
        for _ in range(3):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                scores = model(images, None, toks, lengths)
            loss = triplet_loss(scores.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss), f"{head}/{pooling}: loss {loss}"
        print(f"{head}-small + {pooling}: 3 bf16 AMP steps on CUDA, loss {loss.item():.3f}")
print("CUDA smoke test passed")
