"""PyTorch's side of merge_demo on a GPU: the same soft merge (scores [4, 8] x experts [8, 2^22] -> merged [4, 2^22],
float) as one matrix product, timed like merge_demo (best of 5 after a warm-up, CUDA events), and the device-to-
device copy bandwidth PyTorch reaches on the same GPU in the same run (the memory ceiling merge_demo's own STREAM
kernel underestimates). Run by scripts/gpu-check; prints one line per figure.
"""
import torch

GROUPS, EXPERTS, PARAMS = 4, 8, 1 << 22


def best_ms(fn, reps=5):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return min(times)


def main():
    device = torch.device("cuda")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    gen = torch.Generator(device=device).manual_seed(7)
    scores = torch.rand(GROUPS, EXPERTS, device=device, generator=gen)
    experts = torch.rand(EXPERTS, PARAMS, device=device, generator=gen) * 2 - 1
    merged = torch.empty(GROUPS, PARAMS, device=device)
    ms = best_ms(lambda: torch.matmul(scores, experts, out=merged))
    moved = 4.0 * (EXPERTS + GROUPS) * PARAMS
    reference = scores.double() @ experts.double()
    error = (merged.double() - reference).abs().max().item()
    print(f"torch soft merge: {ms:.3f} ms (best of 5), {moved / ms * 1e-6:.1f} GB/s; max |error| vs float64 {error:.2e}")
    source = torch.empty(1 << 28, device=device)  # 1 GiB
    target = torch.empty_like(source)
    copy_ms = best_ms(lambda: target.copy_(source))
    print(f"torch device copy: {2 * source.numel() * 4 / copy_ms * 1e-6:.1f} GB/s (1 GiB read + written, best of 5)")


if __name__ == "__main__":
    main()
