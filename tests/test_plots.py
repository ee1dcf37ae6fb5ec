"""Plots: from synthetic ablation CSVs, every figure is written as a non-empty PNG; sweeps are ordered."""

import csv
import json

import pytest

from mbpo_lit.experiments import plots
from mbpo_lit.experiments.variants import GRID


def _write(path, columns, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def ablation_dir(tmp_path):
    names = ["full", "online_only", "offline_only", "eps_8", "eps_64", "iig_low"]
    curves, final = [], []
    for i, v in enumerate(names):
        for seed in (0, 1, 2):
            for step in (9, 19, 29):
                curves.append(
                    {"variant": v, "seed": seed, "step": step, "metric": "loss", "value": 1 / (step + i + seed)}
                )
                curves.append(
                    {
                        "variant": v,
                        "seed": seed,
                        "step": step,
                        "metric": "val/counter_prior_accuracy",
                        "value": 0.1 * i + 0.01 * seed,
                    }
                )
            for metric, value in (
                ("in_prior_accuracy", 0.9),
                ("counter_prior_accuracy", 0.1 * i + 0.02 * seed),
                ("gap", 0.8 - 0.1 * i),
            ):
                final.append({"variant": v, "seed": seed, "metric": metric, "value": value})
    _write(tmp_path / "curves.csv", ["variant", "seed", "step", "metric", "value"], curves)
    _write(tmp_path / "final.csv", ["variant", "seed", "metric", "value"], final)
    meta = [{"name": v.name, "description": v.description, "sweeps": v.sweeps} for v in GRID if v.name in names]
    (tmp_path / "variants.json").write_text(json.dumps(meta))
    return tmp_path


def test_plot_all_writes_every_figure(ablation_dir):
    written = plots.plot_all(ablation_dir)
    names = {p.name for p in written}
    # epsilon: 8, 32 (full), 64; iig: high (full), low; stream: hybrid, online, offline. negatives: pgd only -> none
    assert names == {"final.png", "curves.png", "sweep_epsilon.png", "sweep_iig.png", "sweep_stream.png"}
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_cli_writes_into_out(ablation_dir, tmp_path, capsys):
    plots.main(["--directory", str(ablation_dir), "--out", str(tmp_path / "figs")])
    assert (tmp_path / "figs" / "final.png").is_file()
    assert "final.png" in capsys.readouterr().out


def test_cli_reports_a_missing_directory_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        plots.main(["--directory", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "final.csv" in err and "Traceback" not in err


def test_numeric_sweep_is_sorted_by_x_and_drawn_with_ci(ablation_dir):
    meta = plots.read_variants(ablation_dir)
    assert plots.sweep_points(meta, "epsilon") == [("eps_8", 8.0), ("full", 32.0), ("eps_64", 64.0)]
    fig = plots.plot_sweep(plots.read_rows(ablation_dir / "final.csv"), meta, "epsilon")
    ax = fig.axes[0]  # counter_prior_accuracy: x 8, 32, 64 -> variants eps_8 (i=3), full (0), eps_64 (4)
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [8.0, 32.0, 64.0]
    assert list(ys) == pytest.approx([0.32, 0.02, 0.42])
    with pytest.raises(ValueError, match="needs 2 or more"):
        plots.plot_sweep(plots.read_rows(ablation_dir / "final.csv"), meta, "negatives")


def test_curves_have_a_ci_band_per_variant(ablation_dir):
    fig = plots.plot_curves(plots.read_rows(ablation_dir / "curves.csv"), metrics=["loss"])
    ax = fig.axes[0]
    assert len(ax.lines) == 6 and len(ax.collections) == 6  # one mean line and one band per variant
    with pytest.raises(ValueError, match="none of the metrics"):
        plots.plot_curves(plots.read_rows(ablation_dir / "curves.csv"), metrics=["nope"])


def test_empty_final_is_explained(tmp_path):
    _write(tmp_path / "curves.csv", ["variant", "seed", "step", "metric", "value"], [])
    _write(tmp_path / "final.csv", ["variant", "seed", "metric", "value"], [])
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_all(tmp_path)


def test_empty_curves_of_finished_runs_are_explained(ablation_dir):
    """A curves.csv without rows (written before its runs' logs could be read) is refused, not silently undrawn."""
    _write(ablation_dir / "curves.csv", ["variant", "seed", "step", "metric", "value"], [])
    with pytest.raises(ValueError, match="curves.csv has no rows though runs finished: rerun"):
        plots.plot_all(ablation_dir)


def test_paired_differences_are_drawn_at_their_means_with_their_intervals(ablation_dir):
    rows = [
        {
            "variant": v,
            "reference": "online_only",
            "metric": m,
            "n_seeds": 3,
            "mean_diff": d,
            "ci95_low": lo,
            "ci95_high": hi,
        }
        for v, m, d, lo, hi in [
            ("full", "counter_prior_accuracy", 0.05, -0.01, 0.12),
            ("eps_8", "counter_prior_accuracy", -0.10, -0.18, -0.03),
            ("full", "chair_i", 0.01, -0.02, 0.03),
        ]
    ]
    _write(ablation_dir / "paired.csv", list(rows[0]), rows)
    assert "paired.png" in {p.name for p in plots.plot_all(ablation_dir)}
    fig = plots.plot_paired(plots.read_rows(ablation_dir / "paired.csv"), ["counter_prior_accuracy"])
    (ax,) = fig.axes
    assert list(ax.lines[0].get_xdata()) == pytest.approx([0.05, -0.10])  # one point per variant, grid order
    ends = [x for seg in ax.collections[0].get_segments() for x in seg[:, 0]]  # error bars: interval low to high
    assert ends == pytest.approx([-0.01, 0.12, -0.18, -0.03])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["full", "eps_8"]
    assert len(plots.plot_paired(rows).axes) == 2  # a panel per metric present
