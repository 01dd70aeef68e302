import numpy as np
import pytest
from psf_models import REFERENCE_CONFIG, gaussian_stamp

from astropsfmatch import ModelPsfMatcher
from astropsfmatch._engine.grid import CellGrid, next_odd, psf_stamp_size, resize_stamp


class TestCellGrid:
    def test_reference_grid(self):
        grid = CellGrid((4096, 4096), (128, 128), grow=1)
        assert grid.n_cells == (34, 34)
        assert grid.n_candidates == 1156
        np.testing.assert_array_equal(grid.centres_x[:3], [-64, 64, 192])
        assert grid.bbox == (-128.0, 4223.0, -128.0, 4223.0)

    def test_default_grid_tiles_the_image(self):
        grid = CellGrid((1000, 600), (128, 100))
        assert grid.n_cells == (7, 6)
        # leftover pixels split evenly at both ends
        assert grid.cell_bounds(0, 0) == (0, 100, 52, 180)
        np.testing.assert_array_equal(grid.centres_y, 116 + 128 * np.arange(7))
        assert grid.bbox == (0.0, 599.0, 0.0, 999.0)

    def test_positions_row_by_row(self):
        grid = CellGrid((256, 128), 64)
        x, y = grid.positions()
        assert len(x) == grid.n_candidates == 8
        assert (x[0], y[0]) == (32.0, 32.0) and (x[1], y[1]) == (96.0, 32.0)

    def test_square_cell_from_int(self):
        assert CellGrid((256, 256), 64).cell_size == (64, 64)

    @pytest.mark.parametrize(("shape", "cell"), [((100, 300), (192, 192)), ((300, 31), (32, 32))])
    def test_image_smaller_than_a_cell(self, shape, cell):
        with pytest.raises(ValueError, match="smaller than one cell"):
            CellGrid(shape, cell)

    def test_bad_grow(self):
        with pytest.raises(ValueError, match="grow must be an integer >= 0, got -1"):
            CellGrid((256, 256), 64, grow=-1)

    def test_matcher_rejects_small_image(self):
        with pytest.raises(ValueError, match="smaller than one cell"):
            ModelPsfMatcher(REFERENCE_CONFIG).match(np.zeros((64, 64)), gaussian_stamp(11, 3.0),
                                    source_psf=gaussian_stamp(11, 2.0))


class TestPadding:
    """The reference task's own padding tests: 11x11 Gaussian (sigma 2) PSF, 9 px kernel."""

    def test_next_odd(self):
        assert [next_odd(v) for v in (12.6, 13, 14, 29.4)] == [13, 13, 15, 31]

    def test_auto_padding(self):
        assert psf_stamp_size(11, 9) == 13

    @pytest.mark.parametrize(("pad", "size"), [(0, 11), (2, 13), (4, 15)])
    def test_manual_padding(self, pad, size):
        assert psf_stamp_size(11, 9, auto_pad_psf=False, pad_psf_by=pad) == size

    @pytest.mark.parametrize("pad", [1, 3, 5])
    def test_odd_padding_rejected(self, pad):
        with pytest.raises(ValueError, match="pad_psf_by must be even"):
            psf_stamp_size(11, 9, auto_pad_psf=False, pad_psf_by=pad)
        with pytest.raises(ValueError, match="pad_psf_by"):
            REFERENCE_CONFIG.replace(auto_pad_psf=False, pad_psf_by=pad)

    def test_kernel_too_large_names_the_remedies(self):
        with pytest.raises(ValueError, match=r"kernel_size 11 is too large .* smaller kernel_size.*"
                                             r"auto_pad_psf=True.*pad_psf_by"):
            psf_stamp_size(11, 11, auto_pad_psf=False, pad_psf_by=0)

    @pytest.mark.parametrize(("auto", "pad", "size"),
                             [(True, 0, 13), (False, 0, 11), (False, 2, 13), (False, 4, 15)])
    def test_through_the_matcher(self, auto, pad, size):
        config = REFERENCE_CONFIG.replace(kernel_size=9, auto_pad_psf=auto, pad_psf_by=pad,
                                          cell_size=64)
        _, candidates, _, target_stamp, _ = ModelPsfMatcher(config).solve(
            (192, 192), gaussian_stamp(11, 2.0), gaussian_stamp(11, 2.5))
        assert candidates[0].source.shape == (size, size)
        assert target_stamp.shape == (size, size)

    def test_kernel_11_without_padding_through_the_matcher(self):
        config = REFERENCE_CONFIG.replace(kernel_size=11, auto_pad_psf=False, cell_size=64)
        with pytest.raises(ValueError, match="kernel_size 11 is too large"):
            ModelPsfMatcher(config).solve((192, 192), gaussian_stamp(11, 2.0),
                                          gaussian_stamp(11, 2.5))


class TestResize:
    def test_pad_and_clip_keep_the_centre(self):
        stamp = gaussian_stamp(11, 2.0)
        padded = resize_stamp(stamp, 15)
        assert padded.shape == (15, 15) and padded[7, 7] == stamp[5, 5]
        clipped = resize_stamp(stamp, 7)
        np.testing.assert_array_equal(clipped, stamp[2:9, 2:9])
        assert resize_stamp(stamp, 11) is stamp


class TestCandidates:
    def test_one_candidate_per_cell_with_stamps(self):
        _, candidates, grid, *_ = ModelPsfMatcher(REFERENCE_CONFIG, cell_size=64).solve(
            (256, 192), gaussian_stamp(15, 2.0), gaussian_stamp(15, 3.0), kernel_sum=2.0)
        assert len(candidates) == grid.n_candidates == 12
        for cand in candidates:
            assert cand.source.sum() == pytest.approx(1.0)
            assert cand.target.sum() == pytest.approx(2.0)  # scaled by kernel_sum
            assert not cand.rejected
        assert {c.index for c in candidates} == {(iy, ix) for iy in range(4) for ix in range(3)}
