import copy
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from psf_models import REFERENCE_CONFIG

from astropsfmatch import SpatialKernel, diagnostics, make_alard_lupton_basis, match_psf
from astropsfmatch.demo import make_demo_data

Figure = pytest.importorskip("matplotlib.figure").Figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo():
    return make_demo_data(size=256, seed=2)


@pytest.fixture(scope="module")
def result(demo):
    """A small match: 256 x 256, 4 x 4 cells of 64 pixels, 27 basis functions."""
    return match_psf(demo.ccd, demo.target_psf, source_psf=demo.psf_model,
                     config=REFERENCE_CONFIG, cell_size=64)


@pytest.fixture(scope="module")
def result_with_rejected(result):
    """The same result with two candidates marked rejected: cells (0, 0) and (3, 3)."""
    changed = copy.copy(result)
    changed.candidates = [dataclasses.replace(c, rejected=True, reason="test")
                          if k in (0, 15) else c for k, c in enumerate(result.candidates)]
    return changed


@pytest.fixture(scope="module")
def nodes_result(demo):
    """The same image matched with the defaults: a bilinear model between nodes."""
    return match_psf(demo.ccd, demo.target_psf, source_psf=demo.psf_model)


@pytest.fixture(scope="module")
def exact_result():
    """A constant PSF matched almost exactly: residuals are round-off."""
    from photutils.psf import CircularGaussianPRF

    return match_psf(np.zeros((128, 128)), CircularGaussianPRF(fwhm=5.0),
                     source_psf=CircularGaussianPRF(fwhm=3.0))


def constant_kernel(size=7):
    basis = make_alard_lupton_basis(size, [1.0], [1])
    coefficients = np.zeros((3, 1))
    coefficients[0, 0] = 1.0
    return SpatialKernel(basis, coefficients, spatial_model="chebyshev1", spatial_order=0,
                         bbox=(0, 99, 0, 99))


class TestCandidates:
    def test_all_cells_of_a_small_grid(self, result):
        fig = diagnostics.plot_candidates(result)
        assert isinstance(fig, Figure)
        assert result.grid.n_cells == (4, 4)
        assert len(fig.axes) == 16  # one per cell
        assert all(len(ax.get_images()) == 6 for ax in fig.axes)  # S, T, M, K, R, Rs

    def test_subset_spread_over_the_grid(self, result):
        rows, cols, chosen = diagnostics.select_candidates(result, max_per_side=2)
        assert list(rows) == [0, 3] and list(cols) == [0, 3]  # the corners
        assert sorted(chosen) == [(0, 0), (0, 3), (3, 0), (3, 3)]
        fig = diagnostics.plot_candidates(result, max_per_side=2)
        assert len(fig.axes) == 4

    def test_spread_includes_ends(self):
        picked = diagnostics._spread(34, 5)
        assert len(picked) == 5 and picked[0] == 0 and picked[-1] == 33
        assert list(diagnostics._spread(3, 5)) == [0, 1, 2]

    def test_rejected_marked_or_hidden(self, result_with_rejected):
        fig = diagnostics.plot_candidates(result_with_rejected, max_per_side=2)
        titles = [ax.get_title(loc="left") for ax in fig.axes]
        assert sum("rejected" in t for t in titles) == 2
        frames = {ax.spines["left"].get_edgecolor() for ax in fig.axes}
        assert len(frames) == 2  # green and red
        hidden = diagnostics.plot_candidates(result_with_rejected, max_per_side=2,
                                             show_rejected=False)
        assert len(hidden.axes) == 2

    def test_bad_max_per_side(self, result):
        with pytest.raises(ValueError, match="max_per_side must be an integer >= 1"):
            diagnostics.plot_candidates(result, max_per_side=0)

    def test_into_given_figure(self, result):
        fig = Figure()
        assert diagnostics.plot_candidates(result, max_per_side=1, figure=fig) is fig
        assert len(fig.axes) == 1

    def test_spatial_residual(self, result):
        for cand in result.candidates[::5]:
            residual = diagnostics.spatial_residual(result, cand)
            assert residual.shape == cand.fit.residual.shape
            assert np.abs(residual).max() == pytest.approx(cand.spatial_residual_max, rel=1e-6)

    def test_panels_show_the_stamps_and_kernel(self, result):
        fig = diagnostics.plot_candidates(result, max_per_side=1)
        cand = next(c for c in result.candidates if c.index == (0, 0))
        (ax,) = fig.axes
        s, t, m, k, r, rs = (image.get_array() for image in ax.get_images())
        np.testing.assert_allclose(s, cand.source)
        np.testing.assert_allclose(t, cand.target)
        np.testing.assert_allclose(m, cand.fit.model)
        np.testing.assert_allclose(k, result.kernel.evaluate(cand.x, cand.y))
        np.testing.assert_allclose(r, cand.fit.residual)
        np.testing.assert_allclose(rs, diagnostics.spatial_residual(result, cand))


class TestBasis:
    def test_one_panel_per_function(self, result):
        fig = diagnostics.plot_basis(result)
        assert isinstance(fig, Figure)
        assert len(fig.axes) == result.kernel.n_basis == 27
        assert fig.axes[0].get_title() == "B0 σ=0.7 u0v0"
        assert fig.axes[26].get_title() == "B26 σ=3 u2v0"

    def test_first_functions_of_a_kernel(self, result):
        fig = diagnostics.plot_basis(result.kernel, max_functions=5)
        assert len(fig.axes) == 5
        assert fig.axes[1].get_title() == "B1"

    def test_not_a_result(self):
        with pytest.raises(TypeError, match="result must be a MatchResult or a SpatialKernel"):
            diagnostics.plot_basis(np.zeros((3, 5, 5)))


class TestKernelMosaic:
    def test_grid_of_kernels_and_colour_bar(self, result):
        fig = diagnostics.plot_kernel_mosaic(result)
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 5 * 5 + 1

    def test_positions_and_values(self, result):
        fig = diagnostics.plot_kernel_mosaic(result, n=2)
        assert len(fig.axes) == 2 * 2 + 1
        # first panel: the kernel at (0, 0), at the bottom left
        image = fig.axes[0].get_images()[0].get_array()
        np.testing.assert_allclose(image, result.kernel.evaluate(0.0, 0.0))
        assert fig.axes[0].get_title() == "x=0 y=0"

    def test_difference_from_centre(self, result):
        fig = diagnostics.plot_kernel_mosaic(result, n=3, difference=True)
        centre = fig.axes[4].get_images()[0].get_array()  # middle panel: the centre itself
        np.testing.assert_allclose(centre, 0.0, atol=1e-15)

    def test_kernel_needs_shape(self, result):
        with pytest.raises(ValueError, match=r"shape=\(ny, nx\) is required"):
            diagnostics.plot_kernel_mosaic(result.kernel)
        fig = diagnostics.plot_kernel_mosaic(result.kernel, shape=(256, 256), n=2)
        assert len(fig.axes) == 5

    def test_bad_shape(self, result):
        with pytest.raises(ValueError, match="shape must be a pair"):
            diagnostics.plot_kernel_mosaic(result.kernel, shape=(256,))


class TestSpatialCoefficients:
    def test_most_varying_maps_with_colour_bars(self, result):
        fig = diagnostics.plot_spatial_coefficients(result)
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 2 * 12
        titles = [ax.get_title() for ax in fig.axes[::2]]
        shown = [int(t.rsplit("B", 1)[1]) for t in titles]
        assert shown == sorted(shown) and 0 not in shown

    def test_chosen_functions(self, result):
        fig = diagnostics.plot_spatial_coefficients(result, functions=[2, 4], resolution=8)
        assert len(fig.axes) == 4
        assert [ax.get_title() for ax in fig.axes[::2]] == ["coefficient of B2",
                                                            "coefficient of B4"]
        values = fig.axes[0].get_images()[0].get_array()
        assert values.shape == (8, 8)

    def test_candidates_overplotted(self, result_with_rejected):
        fig = diagnostics.plot_spatial_coefficients(result_with_rejected, functions=[2])
        good, bad = fig.axes[0].collections
        assert len(good.get_offsets()) == 14 and len(bad.get_offsets()) == 2

    def test_constant_kernel(self):
        fig = diagnostics.plot_spatial_coefficients(constant_kernel(), shape=(100, 100))
        assert len(fig.axes) == 2 * 2  # B1 and B2, constant: shown anyway

    def test_bad_functions(self, result):
        with pytest.raises(ValueError, match=r"functions must be indices .* in \[0, 26\]"):
            diagnostics.plot_spatial_coefficients(result, functions=[27])


class TestHeldout:
    def test_table_is_the_verdict(self, nodes_result):
        table, quality = nodes_result.heldout, nodes_result.metadata["quality"]
        assert len(table) == quality["n_heldout"] >= 64
        assert float(np.max(table["residual_max"])) == quality["heldout_residual_max"]
        k = int(np.argmax(table["residual_max"]))
        assert (float(table["x"][k]), float(table["y"][k])) == quality["worst_position"]
        ny, nx = nodes_result.matched.shape
        assert 0 <= np.min(table["x"]) and np.max(table["x"]) <= nx - 1
        assert 0 <= np.min(table["y"]) and np.max(table["y"]) <= ny - 1
        # the held-out positions are not the fitted ones
        fx, fy = nodes_result.grid.positions()
        distance = np.hypot(np.asarray(table["x"])[:, None] - fx,
                            np.asarray(table["y"])[:, None] - fy)
        assert distance.min() > 0.01

    def test_map_and_histogram(self, nodes_result):
        fig = nodes_result.plot_heldout()
        assert len(fig.axes) == 3  # map, its colour bar, histogram
        points = fig.axes[0].collections[0]
        np.testing.assert_allclose(points.get_array(), nodes_result.heldout["residual_max"])
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels[0].startswith("worst (") and labels[1] == "fitted nodes (81)"
        assert "passed" in fig.texts[0].get_text() or "passed" in fig._suptitle.get_text()

    def test_positions_above_the_limit_are_ringed(self, nodes_result):
        strict = copy.copy(nodes_result)
        limit = float(np.median(nodes_result.heldout["residual_max"]))
        strict.config = nodes_result.config.replace(max_residual=limit)
        fig = diagnostics.plot_heldout(strict)
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        above = int(np.sum(np.asarray(nodes_result.heldout["residual_max"]) > limit))
        assert labels[0] == f"above max_residual ({above})"

    def test_needs_a_result(self, result):
        with pytest.raises(ValueError, match="no held-out measurement"):
            diagnostics.plot_heldout(result.kernel)


class TestKernelMoments:
    def test_second_moments_add(self):
        # a Gaussian kernel from sigma_s to sigma_t has sigma2 = sigma_t**2 - sigma_s**2
        from psf_models import gaussian_stamp

        from astropsfmatch._engine.moments import kernel_moments

        kernel = gaussian_stamp(41, np.sqrt(2.5**2 - 1.5**2))
        moments = kernel_moments(kernel[None] * 3.0)  # any kernel sum
        assert moments["sigma2"][0] == pytest.approx(2.5**2 - 1.5**2, rel=1e-6)
        assert abs(moments["e1"][0]) < 1e-12 and abs(moments["e2"][0]) < 1e-12
        assert abs(moments["dx"][0]) < 1e-12 and abs(moments["dy"][0]) < 1e-12
        assert moments["noise_gain"][0] == pytest.approx(np.sqrt((kernel**2).sum()))

    def test_maps_of_a_varying_kernel(self, nodes_result):
        fig = nodes_result.plot_kernel_moments(resolution=6)
        assert len(fig.axes) == 2 * 6
        width = fig.axes[0].get_images()[0].get_array()
        assert width.shape == (6, 6) and np.ptp(width) > 0.1  # the PSF broadens: px²
        assert len(fig.axes[0].collections[0].get_offsets()) == 81  # the nodes' own kernels

    def test_constant_kernel_is_drawn_flat(self, exact_result):
        fig = diagnostics.plot_kernel_moments(exact_result, resolution=4)
        for ax, (_, _, _, floor) in zip(fig.axes[::2], diagnostics._MOMENT_PANELS,
                                        strict=True):
            lo, hi = ax.get_images()[0].get_clim()
            assert hi - lo >= floor * (1 - 1e-9)


class TestResidualScale:
    def test_round_off_is_not_drawn_at_full_contrast(self, exact_result):
        fig = exact_result.plot_candidates()
        residual_texts = [t for ax in fig.axes for t in ax.texts if t.get_text().endswith("%")]
        assert len(residual_texts) == 2 * len(fig.axes)  # R and Rs of each block
        lo, hi = fig.axes[0].get_images()[4].get_clim()  # R
        assert fig.axes[0].get_images()[5].get_clim() == (lo, hi)  # Rs
        assert hi == -lo == pytest.approx(0.1 * exact_result.config.max_residual)
        assert "residual scale ±0.1% of the target peak" in fig._suptitle.get_text()

    def test_chosen_scale(self, exact_result):
        fig = exact_result.plot_candidates(residual_scale=1e-9)
        lo, hi = fig.axes[0].get_images()[4].get_clim()
        assert hi == pytest.approx(1e-9)
        with pytest.raises(ValueError, match="residual_scale must be"):
            exact_result.plot_candidates(residual_scale=-1.0)

    def test_title_fits_a_narrow_figure(self, exact_result):
        fig = exact_result.plot_candidates()
        width = fig.get_size_inches()[0]
        longest = max(len(line) for line in fig._suptitle.get_text().split("\n"))
        assert longest * 0.55 * 9 / 72 <= width  # no line wider than the figure

    def test_difference_mosaic_of_a_constant_kernel(self, exact_result):
        fig = exact_result.plot_kernel_mosaic(n=2, difference=True)
        lo, hi = fig.axes[0].get_images()[0].get_clim()
        peak = float(np.abs(exact_result.kernel.evaluate(0, 0)).max())
        assert hi == pytest.approx(0.1 * exact_result.config.max_residual * peak)


class TestCells:
    def test_one_axes_over_the_input(self, result, demo):
        fig = diagnostics.plot_cells(result, demo.ccd)
        assert isinstance(fig, Figure)
        assert len(fig.axes) == 1
        ax = fig.axes[0]
        assert len(ax.patches) == 16 + 1  # cells and the image outline
        assert len(ax.get_images()) == 2  # the image and its mask overlay

    def test_matched_image_by_default(self, result):
        fig = diagnostics.plot_cells(result, show_mask=False)
        np.testing.assert_allclose(fig.axes[0].get_images()[0].get_array(),
                                   result.matched.data, equal_nan=True)

    def test_rejected_in_legend(self, result_with_rejected):
        fig = diagnostics.plot_cells(result_with_rejected)
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels[0].startswith("masked or NaN (")  # every colour has an entry
        assert labels[1:] == ["cell boundaries", "candidates used (14)",
                              "candidates rejected (2)"]

    @pytest.mark.parametrize("with_nan", [True, False])
    @pytest.mark.parametrize("shape", [(12, 12), (13, 17), (1, 5)])
    @pytest.mark.parametrize("factor", [1, 2, 5])
    def test_block_mean_and_any(self, rng, shape, factor, with_nan):
        data = rng.normal(size=shape).astype(np.float32)
        if with_nan:
            data.flat[rng.integers(0, data.size, 3)] = np.nan
        mask = rng.random(shape) < 0.05
        means, bad = diagnostics._block_mean(data, factor)
        blocks = diagnostics._block_any(mask, factor)
        for by in range(-(-shape[0] // factor)):
            for bx in range(-(-shape[1] // factor)):
                block = data[by * factor:(by + 1) * factor, bx * factor:(bx + 1) * factor]
                finite = block[np.isfinite(block)]
                expected = finite.mean() if finite.size else np.nan
                np.testing.assert_allclose(means[by, bx], expected, rtol=1e-5, equal_nan=True)
                assert bad[by, bx] == (finite.size < block.size)
                assert blocks[by, bx] == mask[by * factor:(by + 1) * factor,
                                              bx * factor:(bx + 1) * factor].any()

    def test_large_image_drawn_as_blocks(self, result, demo, monkeypatch):
        # an image with more pixels than its axes is shown as block means over the
        # same extent; the legend still counts the masked pixels themselves
        block_factor = diagnostics._block_factor
        assert block_factor((4096, 4096), 967.5) == 5
        assert block_factor((256, 256), 967.5) == 1
        monkeypatch.setattr(diagnostics, "_block_factor", lambda shape, pixels: 3)
        fig = diagnostics.plot_cells(result, demo.ccd)
        image, overlay = fig.axes[0].get_images()
        assert image.get_array().shape == (86, 86)  # ceil(256 / 3)
        assert image.get_extent() == [-0.5, 255.5, -0.5, 255.5]
        assert overlay.get_array().shape == (86, 86)
        n_bad = int(np.count_nonzero(np.asarray(demo.ccd.mask)
                                     | ~np.isfinite(demo.ccd.data)))
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels[0] == f"masked or NaN ({n_bad} px)"

    def test_node_lines(self, nodes_result):
        fig = diagnostics.plot_cells(nodes_result)
        ax = fig.axes[0]
        nodes_x, nodes_y = nodes_result.kernel.nodes
        assert len(ax.lines) == nodes_x.size + nodes_y.size
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "node lines (kernel interpolated between)" in labels
        assert "kernel nodes" in ax.get_title()

    def test_wrong_image_shape(self, result):
        with pytest.raises(ValueError, match="image must have the shape of the matched image"):
            diagnostics.plot_cells(result, np.zeros((10, 10)))


class TestSaveDiagnostics:
    def test_writes_pngs_and_keeps_existing_files(self, result, demo, tmp_path):
        folder = tmp_path / "new" / "figures"
        paths = result.save_diagnostics(folder, demo.ccd, dpi=30)
        assert [p.name for p in paths] == list(diagnostics.DIAGNOSTIC_FILES.values())
        for path in paths:
            assert path.read_bytes()[:8] == PNG_SIGNATURE
        before = {p.name: p.read_bytes() for p in paths}
        with pytest.raises(FileExistsError, match="cells.png, .*already exist"):
            diagnostics.save_diagnostics(result, folder)
        assert {p.name: p.read_bytes() for p in paths} == before

    def test_nothing_written_when_one_file_exists(self, result, tmp_path):
        (tmp_path / "basis.png").write_text("keep")
        with pytest.raises(FileExistsError, match="basis.png already exist"):
            diagnostics.save_diagnostics(result, tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["basis.png"]
        assert (tmp_path / "basis.png").read_text() == "keep"

    def test_overwrite(self, result, tmp_path, monkeypatch):
        def tiny(*args, **kwargs):
            return Figure(figsize=(1, 1))

        for name in [n for n in diagnostics.__all__ if n.startswith("plot_")]:
            monkeypatch.setattr(diagnostics, name, tiny)
        (tmp_path / "basis.png").write_text("replace me")
        calls = []
        paths = diagnostics.save_diagnostics(
            result, tmp_path, overwrite=True, dpi=10,
            progress=lambda *report: calls.append(report))
        assert len(paths) == len(diagnostics.DIAGNOSTIC_FILES) == 8
        assert (tmp_path / "basis.png").read_bytes()[:8] == PNG_SIGNATURE
        assert [(k, n, p) for k, n, p, _ in calls] == [(k + 1, 8, p)
                                                       for k, p in enumerate(paths)]
        assert all(seconds >= 0 for *_, seconds in calls)
        with pytest.raises(TypeError, match="progress must be None or callable, got str"):
            diagnostics.save_diagnostics(result, tmp_path, overwrite=True, progress="yes")


class TestMatchResultMethods:
    @pytest.mark.parametrize(("method", "options", "n_axes"), [
        ("plot_candidates", {"max_per_side": 1}, 1),
        ("plot_basis", {"max_functions": 2}, 2),
        ("plot_kernel_mosaic", {"n": 1}, 2),
        ("plot_spatial_coefficients", {"functions": [1], "resolution": 4}, 2),
        ("plot_cells", {"show_mask": False}, 1)])
    def test_delegate(self, result, method, options, n_axes):
        fig = getattr(result, method)(**options)
        assert isinstance(fig, Figure)
        assert len(fig.axes) == n_axes

    def test_cells_over_an_array(self, result, demo):
        assert len(result.plot_cells(demo.ccd.data).axes) == 1


def test_matplotlib_is_optional_and_pyplot_never_used():
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"  # as if matplotlib were not installed
        "import astropsfmatch.diagnostics as d, astropsfmatch.cli, astropsfmatch.demo\n"
        "try:\n"
        "    d.save_diagnostics(None, 'never-written')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "del sys.modules['matplotlib']\n"
        "sys.modules['matplotlib.pyplot'] = None\n"  # any pyplot import would fail
        "import io\n"
        "import numpy as np\n"
        "from astropsfmatch import SpatialKernel, make_alard_lupton_basis\n"
        "basis = make_alard_lupton_basis(7, [1.0], [1])\n"
        "c = np.zeros((3, 3)); c[0, 0] = 1; c[1, 1] = 0.1\n"
        "k = SpatialKernel(basis, c, spatial_model='chebyshev1', spatial_order=1,"
        " bbox=(0, 99, 0, 99))\n"
        "for f in (d.plot_basis(k), d.plot_kernel_mosaic(k, shape=(100, 100), n=2),"
        " d.plot_spatial_coefficients(k, shape=(100, 100))):\n"
        "    f.savefig(io.BytesIO(), format='png')\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [
        "the diagnostic figures need matplotlib: pip install matplotlib", "ok"]
