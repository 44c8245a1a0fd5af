"""The quickstart: the main job of the README, on the embedded digits, ending in a report."""

from __future__ import annotations

import html
import json
from pathlib import Path

from .api import sample, train
from .config import RunConfig, SampleConfig, non_default, to_dict
from .report import embed_png, loss_curve, write_html
from .runs import read_json


def quickstart(out: str | Path = "runs/quickstart", *, steps: int = 1500, num_samples: int = 64,
               preset: str = "tiny", dataset: str = "embedded", data_dir: str | None = None,
               progress: bool = True, log=print) -> Path:
    """Train a small DDPM, sample it, and write ``OUT/report.html``; finished steps are reused."""
    out = Path(out)
    config = RunConfig()
    config.model.preset = preset
    config.data.dataset = dataset
    config.data.data_dir = data_dir
    config.train.steps = steps
    run_dir = out / "dense"
    resume = (run_dir / "checkpoints" / "latest.json").exists()
    train(config, run_dir, resume=resume, progress=progress, log=log)
    sample_config = SampleConfig(sampler="ddim", sampling_steps=50, num_samples=num_samples, sample_seed=0)
    samples_dir = sample(run_dir, sample_config, progress=progress, log=log)
    info = read_json(samples_dir / "info.json")
    curve = loss_curve(run_dir / "metrics.jsonl", out / "loss.png",
                       f"training loss, preset {preset}, batch {config.train.batch_size}")
    status = read_json(run_dir / "status.json")
    caption = (f"{info['num_samples']} samples, {info['sampler']} {info['steps']} steps, eta {info['eta']}, "
               f"seed {info['seed']}, {info['weights']} weights")
    sections = [
        ("Dense model", f"<p>Preset <b>{html.escape(preset)}</b> trained for {steps} steps on "
                        f"<b>{html.escape(dataset)}</b>; final loss {status['last_session']['final_loss']:.4f}.</p>"),
        ("Samples", f"{embed_png(samples_dir / 'grid.png')}<p class='note'>{html.escape(caption)}</p>"),
    ]
    if curve is not None:
        sections.append(("Training loss", embed_png(curve)))
    command = (f"ddpm-lottery quickstart --out {out} --steps {steps} --num-samples {num_samples} "
               f"--preset {preset} --dataset {dataset}" + (f" --data-dir {data_dir}" if data_dir else ""))
    sections.append(("How this was made", f"<pre>{html.escape(command)}</pre><p>Non-default settings:</p>"
                     f"<pre>{html.escape(json.dumps(non_default(config), indent=2))}</pre>"
                     f"<details><summary>full config</summary><pre>"
                     f"{html.escape(json.dumps(to_dict(config), indent=2))}</pre></details>"))
    report = write_html(out / "report.html", "ddpm-lottery quickstart report", sections)
    return report
