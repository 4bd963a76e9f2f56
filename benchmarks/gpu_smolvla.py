"""Real-size SmolVLA on one accelerator: chunk sampling, likelihood recomputation and one GRPO update.

    python benchmarks/gpu_smolvla.py --device cuda [--groups 6,16] [--dtypes fp32,bf16] [--out gpu.json]
    python benchmarks/gpu_smolvla.py --device cpu --policy tiny --groups 2 --repeats 1   # smoke test

The policy is `random-smolvla` by default: lerobot's SmolVLA classes at the real shapes (SmolVLM2-500M
backbone, 16 VLM layers, 450 M parameters) with random weights, built offline, so no hub is needed;
pass a hub id or a local policy directory to time real weights. For each dtype and group size it
times, after one warm-up: (1) sampling a chunk for every group member (one prefix pass + K Flow-SDE
denoising steps), (2) recomputing the chain log-likelihood of those chunks, (3) one GRPO update
(prefix, likelihood with gradients, clipped surrogate, backward, AdamW step on the action head).
bf16 runs the forward passes under autocast (weights and optimizer state stay fp32). Prints seconds
and peak accelerator memory per measurement and writes them as JSON with the device name.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from grpo_cli import grpo  # noqa: E402
from grpo_cli.policies.smolvla import SmolVLAAdapter, parameter_groups  # noqa: E402

TASK = "put both the alphabet soup and the tomato sauce in the basket"


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds of fn() over `repeats` runs after one warm-up, and peak memory in GiB."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return float(np.median(times)), peak


def measure(adapter: SmolVLAAdapter, optimizer: torch.optim.Optimizer, device: torch.device, dtype: str, n: int,
            args: argparse.Namespace, rng: np.random.Generator) -> dict[str, float | int | str]:
    """Time sampling, likelihood and one update for a group of n chunks at one dtype."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    obs = [{**{key: rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
               for key in adapter.image_keys},
            "observation.state": rng.standard_normal(adapter.state_dim).astype(np.float32)} for _ in range(n)]
    batch = adapter.preprocess(obs, [TASK] * n)
    generators = [torch.Generator().manual_seed(i) for i in range(n)]
    chains: list[torch.Tensor] = []  # (n, K+1, H, Dm), from the last sample()

    def sample() -> None:
        with torch.no_grad(), autocast:
            prefix = adapter.encode_prefix(batch)
            noise = torch.cat([adapter.sample_noise(g) for g in generators]).to(device)
            out = adapter.denoise(prefix, noise, [args.denoise_steps] * n, args.sde_noise, generators)
        chains[:] = [torch.stack(out).float()]

    def logprob(grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad), autocast:
            prefix = adapter.encode_prefix(batch)
            targets, means, stds = adapter.transitions(prefix, chains[0], "sde", args.sde_noise)
        return grpo.gaussian_logdensity(targets.flatten(0, 1).float(), means.flatten(0, 1).float(),
                                        stds.flatten().float(), adapter.action_mask.to(device))

    advantages = torch.linspace(-1, 1, n, device=device).repeat_interleave(args.denoise_steps)

    def update(old: torch.Tensor) -> None:
        loss, _ = grpo.clipped_surrogate((logprob(grad=True) - old).sum(dim=(-2, -1)), advantages, 0.2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t_sample, m_sample = timed(sample, device, args.repeats)
    with torch.no_grad():
        old = logprob(grad=False)
    t_like, m_like = timed(lambda: logprob(grad=False), device, args.repeats)
    t_update, m_update = timed(lambda: update(old), device, args.repeats)
    return {"dtype": dtype, "group": n, "sample_s": t_sample, "sample_peak_gib": m_sample, "likelihood_s": t_like,
            "likelihood_peak_gib": m_like, "update_s": t_update, "update_peak_gib": m_update}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--policy", default="random-smolvla")
    parser.add_argument("--groups", default="6,16", help="group sizes (chunks per batch)")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--denoise-steps", type=int, default=10)
    parser.add_argument("--sde-noise", type=float, default=0.3)
    parser.add_argument("--image-size", type=int, default=256, help="camera resolution fed to the policy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON results file")
    args = parser.parse_args()
    device = torch.device(args.device)
    adapter = SmolVLAAdapter.load(args.policy, device=args.device)
    adapter.policy.to(device)
    head = parameter_groups(adapter.policy, train_backbone=False)["head"]
    optimizer = torch.optim.AdamW(head, lr=1e-5)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    n_params = sum(p.numel() for p in adapter.policy.parameters())
    print(f"{args.policy} ({n_params / 1e6:.0f} M parameters, {sum(p.numel() for p in head) / 1e6:.0f} M trainable)"
          f" on {name}, K = {args.denoise_steps}, {args.image_size} px, {time.strftime('%Y-%m-%d')}")
    rng = np.random.default_rng(0)
    rows: list[dict[str, float | int | str]] = []
    for dtype in args.dtypes.split(","):
        for n in (int(g) for g in args.groups.split(",")):
            try:
                row = measure(adapter, optimizer, device, dtype, n, args, rng)
            except Exception as err:  # noqa: BLE001 - a failing row (e.g. out of memory) is a result too
                row = {"dtype": dtype, "group": n, "error": f"{err.__class__.__name__}: {str(err)[:300]}"}
                print(f"{dtype:5s} group {n:3d}: {row['error']}", flush=True)
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            else:
                print(f"{dtype:5s} group {n:3d}: sample {row['sample_s']:7.3f} s ({row['sample_peak_gib']:5.1f} GiB)  "
                      f"likelihood {row['likelihood_s']:7.3f} s ({row['likelihood_peak_gib']:5.1f} GiB)  "
                      f"update {row['update_s']:7.3f} s ({row['update_peak_gib']:5.1f} GiB)", flush=True)
            rows.append(row)
            if args.out:  # after every row, so a time limit still leaves what was measured
                Path(args.out).write_text(json.dumps(
                    {"device": name, "policy": args.policy, "parameters": n_params, "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d"), "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
