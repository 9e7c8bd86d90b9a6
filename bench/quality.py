#!/usr/bin/env python3
"""Model quality against the MADE paper: train each dataset with its recorded recipe, then evaluate the
validation NLL with ensembles of 1, 2, 4, ..., 512 masks (as many as the model stores).

Prints a table: dataset | config | validation NLL, 1 mask / best ensemble | paper test NLL (1 mask / best) |
training time | device, and writes results JSON plus the paper's Figure 2 (NLL against the number of
masks averaged at test time) as a PNG. Training runs `made train` (so every model carries its command line
in its training record); progress goes to stderr.

    bench/quality.py                                  # every dataset, the full recipes (hours on 2 CPU cores)
    bench/quality.py --datasets uci-dna uci-mushrooms # some of them
    bench/quality.py --quick                          # reduced recipes: a few minutes
    bench/quality.py --evaluate-only                  # evaluate what --out-dir already holds
    bench/quality.py --shipped                        # evaluate the shipped models/<name>/1
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from service import checkpoint, data  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
# Published *test* NLL in nats (1 mask, best MADE); we report validation NLL (the test split is not here).
PAPER = {
    "binarized-mnist": (88.40, 86.64),
    "binarized-mnist-any-order": (88.40, 86.64),
    "uci-dna": (83.63, 79.66),
    "uci-mushrooms": (9.68, 9.69),
    "uci-nips": (280.25, 277.28),
}
COMMON = ["--order", "random", "--direct", "--lr-schedule", "cosine"]
# mask conditioning only means something with several masks
AGNOSTIC = "--mask-conditioning --resample both"
RECIPES = {
    # name: (data file, made train flags). These are the recipes of the shipped models (models/<name>/1).
    "binarized-mnist": (
        "binarized_mnist.npz",
        "--hidden 6000 --dropout 0.5 --epochs 24 --patience 0 --ema-decay 0.999 --batch-size 100 "
        "--input-shape 28 28 --weights-dtype float16",
    ),
    "binarized-mnist-any-order": (
        "binarized_mnist.npz",
        f"{AGNOSTIC} --hidden 2000 --masks 16 --epochs 60 --patience 15 --batch-size 100 "
        "--input-shape 28 28 --weights-dtype float16",
    ),
    "uci-dna": (
        "uci/dna.npz",
        f"{AGNOSTIC} --hidden 2000 --masks 512 --fresh-masks --lr 3e-3 --epochs 2000 --patience 300 "
        "--ema-decay 0.999 --valid-masks 8 --batch-size 100",
    ),
    "uci-mushrooms": (
        "uci/mushrooms.npz",
        f"{AGNOSTIC} --hidden 500 --masks 32 --lr 3e-3 --epochs 1600 --patience 200 --batch-size 100",
    ),
    "uci-nips": (
        "uci/nips.npz",
        f"{AGNOSTIC} --hidden 500 --masks 32 --epochs 300 --patience 60 --batch-size 20 --dropout 0.3 "
        "--weight-decay 1e-4",
    ),
}
RECIPES = {name: (data, shlex.split(flags)) for name, (data, flags) in RECIPES.items()}
QUICK = {  # the same recipes, reduced to minutes: not for the results table
    "binarized-mnist": "--hidden 300 --dropout 0.5 --epochs 2 --ema-decay 0.99 --input-shape 28 28",
    "binarized-mnist-any-order": f"{AGNOSTIC} --hidden 300 --masks 4 --epochs 2 --input-shape 28 28",
    "uci-dna": f"{AGNOSTIC} --hidden 200 --masks 8 --epochs 20",
    "uci-mushrooms": f"{AGNOSTIC} --hidden 200 --masks 8 --epochs 20",
    "uci-nips": f"{AGNOSTIC} --hidden 200 --masks 8 --epochs 20 --batch-size 20",
}
QUICK = {name: shlex.split(flags) for name, flags in QUICK.items()}
# Mixtures (`made merge`): the recipe is trained once per member, with that member's extra flags (later flags
# win), then the members are merged with MERGE_FLAGS. The mixture's "masks" are its members.
MEMBERS = {"binarized-mnist": [["--seed", "0"], ["--seed", "1"]]}
MERGE_FLAGS = ["--weights-dtype", "int8"]
ENSEMBLES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def log(message: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def made() -> str:
    return str(Path(sys.executable).parent / "made")


def train(name: str, out: Path, quick: bool, device: str) -> float:
    data_file, flags = RECIPES[name]
    flags = QUICK[name] if quick else flags
    started = time.monotonic()
    members = MEMBERS.get(name, [[]])  # one model unless the recipe is a mixture
    outs = [out.with_name(f"{out.name}-member{i}") for i in range(len(members))] if name in MEMBERS else [out]
    commands = [
        [
            made(),
            "train",
            "--data",
            str(DATA / data_file),
            "--out",
            str(model_out),
            *COMMON,
            *flags,
            "--device",
            device,
            "--seed",
            "0",
            *extra,
        ]
        for model_out, extra in zip(outs, members, strict=True)
    ]
    if name in MEMBERS:
        commands.append(
            [
                made(),
                "merge",
                *map(str, outs),
                "--out",
                str(out),
                "--data",
                f"{DATA / data_file}:valid_x",
                *MERGE_FLAGS,
            ]
        )
    for command in commands:
        log(f"{name}: {shlex.join(command)}")
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


@torch.no_grad()
def evaluate(name: str, model_dir: Path, device: str) -> dict:
    """Validation NLL for ensembles of 1, 2, 4, ... masks, from one pass per mask."""
    model, config = checkpoint.load(model_dir, device=device)
    data_file, _ = RECIPES[name]
    x = data.load(str(DATA / data_file), model.likelihood, model.n_dims, role="valid")
    per_mask = torch.cat(
        [
            model.log_prob_per_mask(x[i : i + 2000].to(model.device), masks=config.n_masks).double()
            for i in range(0, len(x), 2000)
        ],
        dim=1,
    )  # (M, N)
    nll = {}
    for K in ENSEMBLES:
        if K <= config.n_masks:
            nll[K] = -(torch.logsumexp(per_mask[:K], 0) - math.log(K)).mean().item()
    record = config.training
    # A mixture's training is its members' (its own record is the merge).
    if record is None:
        trained = []
    elif getattr(record, "members", None):
        trained = [argparse.Namespace(**member) for member in record.members]
    else:
        trained = [record]
    seconds = [getattr(r, "train_seconds", None) for r in trained]
    return {
        "dataset": name,
        "nll": nll,
        "masks_default": config.eval_masks,
        "hidden": config.hidden_sizes,
        "n_masks": config.n_masks,
        "mixture": config.mixture,
        "command": record.command if record else None,
        "train_seconds": sum(seconds) if seconds and None not in seconds else None,
        "device": getattr(trained[0], "device", None) if trained else None,
        "valid_rows": len(x),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        ks = sorted(int(k) for k in r["nll"])
        ax.plot(ks, [r["nll"][k] for k in ks], "o-", label="ours (validation)")
        one, best = PAPER[r["dataset"]]
        ax.axhline(one, color="grey", linestyle="--", linewidth=1, label="paper, 1 mask (test)")
        ax.axhline(best, color="black", linestyle=":", linewidth=1, label="paper, best (test)")
        ax.set_xscale("log", base=2)
        step = 1 if len(ks) <= 6 else 2  # every other label where there are many, the last one labelled
        ax.set_xticks(ks, [str(k) if (len(ks) - 1 - i) % step == 0 else "" for i, k in enumerate(ks)])
        ax.set_title(r["dataset"])
        ax.set_xlabel("masks averaged at test time")
    axes[0][0].set_ylabel("NLL (nats)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--quick", action="store_true", help="reduced recipes (minutes), not for the results")
    parser.add_argument(
        "--out-dir", default=None, help="where models go (default runs/quality, runs/quality-quick)"
    )
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument(
        "--shipped", action="store_true", help="evaluate the shipped models/<name>/1 (no training)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--plot", default=None, help="PNG of NLL against masks (default <out-dir>/masks.png)")
    args = parser.parse_args()
    out_dir = Path(args.out_dir or ROOT / ("runs/quality-quick" if args.quick else "runs/quality"))
    results = []
    for name in args.datasets:
        model_dir = ROOT / "models" / name / "1" if args.shipped else out_dir / name
        seconds = None
        if not (args.evaluate_only or args.shipped):
            seconds = train(name, model_dir, args.quick, args.device)
        result = evaluate(
            name,
            model_dir,
            "cpu"
            if args.device == "auto" and not torch.cuda.is_available()
            else args.device
            if args.device != "auto"
            else "cuda",
        )
        result["wall_seconds"] = seconds
        results.append(result)
        log(f"{name}: " + ", ".join(f"{k} masks {v:.2f}" for k, v in result["nll"].items()))
    print(
        "| dataset | config | validation NLL: 1 mask / best ensemble (masks) | paper test NLL: 1 mask / best "
        "| training time | device |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        best_k = min(r["nll"], key=r["nll"].get)
        hidden = "x".join(map(str, r["hidden"]))
        kind = (
            f"mixture of {r['n_masks']} MADEs"
            if r.get("mixture")
            else f"{r['n_masks']} mask{'s' if r['n_masks'] > 1 else ''}"
        )
        minutes = r["train_seconds"] / 60 if r["train_seconds"] else float("nan")
        print(
            f"| {r['dataset']} | {hidden} hidden, {kind} | {r['nll'][1]:.2f} / {r['nll'][best_k]:.2f} "
            f"({best_k}) | {PAPER[r['dataset']][0]:.2f} / {PAPER[r['dataset']][1]:.2f} | {minutes:.1f} min | "
            f"{r['device']} |"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot_path = Path(args.plot) if args.plot else out_dir / "masks.png"
    plot(results, plot_path)
    print(
        f"\n{datetime.now(UTC).isoformat(timespec='seconds')}; "
        f"`{shlex.join(['bench/quality.py', *sys.argv[1:]])}`; "
        f"plot: {plot_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
