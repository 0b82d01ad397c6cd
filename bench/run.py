"""The TFS-Diff speed benchmark: network cost per step (plain vs optimised path) and end-to-end sampling quality.

    python -m bench.run [--quick] [--out bench/results.json] [--checkpoint CKPT] [--e2e-config config/demo.json]

The end-to-end part samples with --checkpoint, by default the e2e config's own checkpoint (`path.resume_state`,
else `path.pretrained`: for config/demo.json the shipped demo weights).

Prints Markdown tables (the ones in docs/speed.md) and writes every measurement to JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bench.end_to_end import benchmark_end_to_end
from bench.measure import machine_info, matmul_peak_gflops
from bench.network import PATHS, benchmark_network, optimised_performance
from core.cli import add_debug_arg, run_command
from core.config import load_config
from model.checkpoint_io import check_readable

NETWORK_CONFIGS = ("config/demo.json", "config/tfsdiff_x4_64_256.json")
# (training reps, sampling reps) per config; --quick uses fewer on the paper config.
REPS = {"full": ((7, 9), (5, 7)), "quick": ((5, 7), (3, 3))}
QUICK_E2E_CASES, QUICK_E2E_MAX_STEPS = 4, 50


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer repetitions; end to end on {QUICK_E2E_CASES} cases up to "
                             f"{QUICK_E2E_MAX_STEPS} steps")
    parser.add_argument("--out", default="bench/results.json", help="JSON file to write")
    parser.add_argument("--checkpoint", help="trained checkpoint for the end-to-end part (default: the e2e config's "
                                             "path.resume_state or path.pretrained; skipped without any)")
    parser.add_argument("--e2e-config", default="config/demo.json", help="config of --checkpoint and its test set")
    parser.add_argument("--cases", type=int, help="end to end: only the first CASES test cases")
    parser.add_argument("--compile", action="store_true", help="add torch.compile to the optimised path (slow start)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_debug_arg(parser)
    return parser.parse_args(argv)


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def network_table(results: list[dict[str, Any]]) -> str:
    lines = ["| config | params | GFLOPs/forward | path | train step (s) | sampling step (s) | train % of peak | "
             "sampling % of peak | train peak mem (MiB) | sampling peak mem (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for path in PATHS:
            t, s = r[path]["train"], r[path]["sample"]
            lines.append(f"| {Path(r['config']).stem} ({r['image_size']}px, batch 1) | {r['parameters'] / 1e6:.2f} M | "
                         f"{r['gflops_forward']:.1f} | {path} | {t['seconds']:.3f} | {s['seconds']:.3f} | "
                         f"{100 * t['fraction_of_peak']:.0f}% | {100 * s['fraction_of_peak']:.0f}% | "
                         f"{_mib(t['peak_memory_bytes'])} | {_mib(s['peak_memory_bytes'])} |")
        lines.append(f"| | | | **optimised / plain** | **{r['ratio_train']:.2f}** | **{r['ratio_sample']:.2f}** "
                     f"| noise-prediction error of the optimised path: "
                     f"{100 * r['optimised_eps_relative_rms_error']:.2f}% (relative RMS) | | | |")
    return "\n".join(lines)


def end_to_end_table(e2e: dict[str, Any]) -> str:
    lines = ["| sampler | steps | s / image | speed-up | PSNR (dB) | SSIM | PSNR - full chain (dB) |",
             "|---|---|---|---|---|---|---|"]
    for r in e2e["rows"]:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['seconds_per_image']:.2f} | {r['speedup']:.1f}x | "
                     f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['psnr_minus_full']:+.2f} |")
    c = e2e["criterion"]
    verdict = f"met by {', '.join(c['met_by'])}" if c["met"] else \
        f"not met (candidates: {', '.join(c['candidates']) or 'none run'})"
    return "\n".join(lines) + f"\n\nCriterion {c['text']}: {verdict}."


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: run(args), args.debug)


def run(args: argparse.Namespace) -> int:
    """Measure, print the tables and write the JSON report; errors propagate to `core.cli.run_command`."""
    checkpoint = args.checkpoint or load_config(args.e2e_config).path.sampling_checkpoint()
    if checkpoint:
        check_readable(checkpoint)  # now, not after the network part
    device = torch.device(args.device)
    mode = "quick" if args.quick else "full"
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine_info(device), "mode": mode}
    peak = matmul_peak_gflops(device)
    optimised = optimised_performance(device, args.compile)
    report |= {"matmul_peak_gflops_fp32": peak, "optimised_switches": asdict(optimised)}
    print(f"machine: {report['machine']}\nfp32 matmul peak: {peak:.1f} GFLOP/s; optimised path: {optimised}",
          flush=True)
    report["network"] = []
    for config, (reps_train, reps_sample) in zip(NETWORK_CONFIGS, REPS[mode]):
        print(f"network: {config} ({reps_train} training / {reps_sample} sampling repetitions per path)", flush=True)
        report["network"].append(benchmark_network(config, device, reps_train, reps_sample, peak, optimised))
    print("\n" + network_table(report["network"]))
    print(f"\nmemory: {report['network'][0]['memory_method']}")
    if checkpoint:
        cases = args.cases if args.cases is not None else (QUICK_E2E_CASES if args.quick else None)
        e2e = benchmark_end_to_end(args.e2e_config, checkpoint, device, cases,
                                   QUICK_E2E_MAX_STEPS if args.quick else None)
        report["end_to_end"] = e2e
        print(f"\nend to end: {e2e['config']}, {e2e['checkpoint']}, {e2e['cases']} cases of {e2e['test_set']} "
              f"(bicubic-then-fuse baseline PSNR {e2e['bicubic_then_fuse_psnr']:.2f} dB)\n")
        print(end_to_end_table(e2e))
    else:
        print("\nend to end: skipped (no checkpoint: pass --checkpoint to measure seconds per image and PSNR per "
              "sampler)")
    report["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"\nwritten {out} in {report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
