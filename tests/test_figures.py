"""Figures as a reader sees them: labelled axes, no empty panels, no overlapping tick labels."""

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402 -- import block below matplotlib.use
import torch  # noqa: E402 -- import block below matplotlib.use

from tokendyn.analysis.render import grid_shape, plot_hidden_attention  # noqa: E402 -- import block below matplotlib.use


def overlapping_tick_labels(fig) -> list:
    """Pairs of visible tick labels, on one axis of one panel, whose drawn boxes intersect."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in axis.get_ticklabels()
                     if t.get_visible() and t.get_text()]
            bad += [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]
    return bad


def assert_labelled(axes) -> None:
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axis in {ax.get_title()!r}"


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_hidden_attention_grid_has_no_empty_panel(k):
    g = torch.Generator().manual_seed(k)
    maps = [{"layer": i, "channel": 2 * i, "P": torch.rand(12, 12, generator=g, dtype=torch.float64).tril(),
             "layer_choice": "middle", "channel_choice": "largest mean Δ"} for i in range(k)]
    fig = plot_hidden_attention(maps)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == k                                  # one panel per map ...
    assert all(ax.images or ax.get_label() == "<colorbar>" for ax in fig.axes)   # ... and nothing empty
    rows, cols = grid_shape(k)
    assert rows * cols - k < cols and cols <= 2          # at most two panels side by side: reads on a phone
    assert all("largest mean Δ" in ax.get_title() for ax in panels)
    assert_labelled(panels)
    assert not overlapping_tick_labels(fig)
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("values", [
    [-370.0, -0.41, -2.0],                      # one sign, three decades
    [1.5, 6e-3, -1.0, -6e-3],                   # both signs, small magnitudes
    [-1e3, 1e3, 0.05, -2e-3, 3e-1],             # wide on both sides: labels must be thinned
    [0.13, 0.6, 0.35],                          # less than a decade: plain ticks
])
def test_symlog_axis_fits_the_data(values):
    import matplotlib.pyplot as plt
    import numpy as np

    from tokendyn.report.axes import symlog_axis

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(np.arange(len(values)), values, "o")
    symlog_axis(ax, "y", values)
    lo, hi = ax.get_ylim()
    v = np.asarray(values)
    assert lo <= v.min() and v.max() <= hi
    assert abs(lo) <= 1.31 * max(abs(v.min()), 1e-300) + 1e-12 and abs(hi) <= 1.31 * abs(v.max()) + 1e-12
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    assert len(ticks) >= 2
    # the linear band stops at the decade of the smallest |value|: no empty decades below the data
    assert ax.yaxis.get_transform().linthresh <= np.abs(v[v != 0]).min() < 10 * ax.yaxis.get_transform().linthresh
    assert not overlapping_tick_labels(fig)
    plt.close(fig)


@pytest.mark.slow
def test_dynamics_figures_have_legends_labels_and_readable_ticks(tmp_path, monkeypatch):
    from tokendyn.dynamics import plots

    drawn = []
    real_save = plots._save

    def looked_at(fig, path, rect=None):      # as the figure is written: laid out, before it is closed
        fig.canvas.draw()
        assert_labelled([ax for ax in fig.axes if ax.axison])
        assert not overlapping_tick_labels(fig)
        drawn.append(fig)
        return real_save(fig, path, rect)

    monkeypatch.setattr(plots, "_save", looked_at)
    measured = plots.figure_regimes_1d(tmp_path / "r.png", n_points=30)
    plots.figure_fig6(tmp_path / "f6.png", n_points=30)
    assert measured == {k: k for k in measured}
    one_d, fig6 = drawn
    legend = [t.get_text() for t in one_d.axes[3].get_legend().get_texts()]      # the key in the fourth cell
    assert "token 1" in legend and "blew up" in legend
    assert [ax.get_yscale() for ax in one_d.axes[:3]] == ["log"] * 3            # |x_l| on a log scale
    legend = [t.get_text() for t in fig6.legends[0].get_texts()]
    assert {"token 1", "start x_l(0)", "blew up", "stopped with a blow-up"} <= set(legend)
    # no symlog anywhere: the phase portraits are linear (convergence reaches the origin), the norms log-log
    scales = {(ax.get_xscale(), ax.get_yscale()) for ax in fig6.axes}
    assert scales == {("linear", "linear"), ("log", "log")}
    for fig in drawn:                         # a grid that reads at a phone's width, not a strip
        w, h = fig.get_size_inches()
        assert w <= 8.5 and max(len({round(ax.get_position().x0, 2) for ax in fig.axes if ax.axison}), 1) <= 2


@pytest.mark.parametrize("lo,hi,expect", [
    (0.93, 1.09, None),                                 # under a decade, no round values: evenly spaced
    (75.0, 220.0, [80.0, 100.0, 150.0, 200.0]),         # under a decade: round values
    (12.5, 53.0, [15.0, 20.0, 30.0, 40.0, 50.0]),
    (0.016, 1.0, [0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),    # over a decade: 1, 2, 5 × powers of ten
    (1e-4, 1e4, [1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4]),   # crowded: the powers alone
])
def test_plain_log_ticks_label_with_plain_numbers(lo, hi, expect):
    import matplotlib.pyplot as plt

    from tokendyn.report.axes import plain_log_ticks

    fig, ax = plt.subplots()
    ax.plot([0, 1], [lo, hi])
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    plain_log_ticks(ax, "y")
    fig.canvas.draw()
    ticks = list(ax.get_yticks())
    labels = [t.get_text() for t in ax.get_yticklabels()]
    plt.close(fig)
    assert len(ticks) >= 3 and all(lo <= t <= hi for t in ticks)
    if expect is not None:
        assert ticks == pytest.approx(expect)
    else:   # evenly spaced
        steps = [b - a for a, b in zip(ticks, ticks[1:])]
        assert max(steps) == pytest.approx(min(steps))
    assert all(lab and "e" not in lab and "times" not in lab and "^" not in lab for lab in labels[:len(ticks)]), labels
    assert ax.yaxis.get_minor_locator().tick_values(lo, hi) == []
