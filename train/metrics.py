"""Run metrics: JSON Lines, TensorBoard event files, and a loss-curve PNG at the end."""

from __future__ import annotations

import json
from pathlib import Path


class MetricWriter:
    """Appends ``{"step": s, "split": ..., **metrics}`` lines to ``metrics.jsonl`` and scalars to
    TensorBoard (``tb/``) in the run folder. Only host 0 writes."""

    def __init__(self, run_dir, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": int(step), "split": split, **metrics}) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(f"{split}/{key}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_loss_curve(run_dir, out: str = "loss_curve.png") -> Path:
    """Training and validation loss against step, from ``metrics.jsonl``. Later lines for a step
    (a resumed run repeats some) replace earlier ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[int, float]] = {}
    for row in read_metrics(run_dir):
        if "loss" in row:
            series.setdefault(row["split"], {})[row["step"]] = row["loss"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, points in sorted(series.items()):
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], marker="o" if split != "train" else None, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(run_dir) / out
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
