"""Tests of astropsfmatch._workflow.many: match_many, serially and on a dask cluster."""

import logging
import os
import pickle
import sys
import threading
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.wcs import WCS
from photutils.psf import CircularGaussianPRF

from astropsfmatch import (
    MatchConfig,
    MatchQualityWarning,
    MatchResult,
    ModelPsfMatcher,
    SpatialKernel,
    coadd,
)
from astropsfmatch._adapters.psf import realize_psf
from astropsfmatch._workflow.many import ManyResult, match_many

SHAPE = (192, 192)
CONFIG = MatchConfig(cell_size=64)
TARGET = CircularGaussianPRF(fwhm=4.0)
SOURCE_FWHM = (2.5, 3.0, 3.4)
# two cells per axis cannot hold a spatial order of 2: each exposure warns, the same way
WARNING_CONFIG = CONFIG.replace(spatial_model="chebyshev1", spatial_order=2, cell_size=96)
# no match reaches this: each one emits a MatchQualityWarning
POOR_CONFIG = CONFIG.replace(max_residual=1e-12)


def make_image(index, *, psf=True):
    """A small noisy star field whose PSF (a constant stamp in ``psf``) is Gaussian."""
    rng = np.random.default_rng(100 + index)
    stamp = realize_psf(CircularGaussianPRF(fwhm=SOURCE_FWHM[index % 3]), 0.0, 0.0, size=21)
    data = rng.normal(0.0, 1.0, SHAPE)
    for y in range(40, 160, 40):
        for x in range(40, 160, 40):
            data[y - 10:y + 11, x - 10:x + 11] += 1000.0 * stamp
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, 20.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    wcs.wcs.crpix = [96.5 + index, 96.5]
    return CCDData(data, unit="electron", wcs=wcs, meta={"OBJECT": f"field {index}"},
                   uncertainty=StdDevUncertainty(np.ones(SHAPE)), psf=stamp if psf else None)


@pytest.fixture(scope="module")
def images():
    return [make_image(i) for i in range(3)]


@pytest.fixture(scope="module")
def serial(images):
    return match_many(images, TARGET, config=CONFIG, progress=False)


@pytest.fixture(scope="module")
def paths(images, tmp_path_factory):
    """The images as FITS files (with their PSF in a PSFIMAGE extension)."""
    directory = tmp_path_factory.mktemp("inputs")
    paths = []
    for index, image in enumerate(images):
        path = directory / f"raw_{index}.fits"
        image.write(path)
        paths.append(str(path))
    return paths


def assert_same_results(results, expected, *, exact=True):
    assert len(results) == len(expected)
    for result, reference in zip(results, expected, strict=True):
        if reference is None:
            assert result is None
            continue
        a = result.matched if isinstance(result, MatchResult) else CCDData.read(result)
        b = reference.matched if isinstance(reference, MatchResult) else CCDData.read(reference)
        if exact:
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.uncertainty.array, b.uncertainty.array)
        else:
            # other thread counts round BLAS and FFT sums differently; the default basis of
            # a constant PSF (ridge-regularized delta functions, condition number up to
            # ~1e10) turns that into differences of ~1e-9 of the peak
            scale = np.nanmax(np.abs(b.data))
            np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-8 * scale)
            np.testing.assert_allclose(a.uncertainty.array, b.uncertainty.array, rtol=1e-6)
        np.testing.assert_array_equal(a.mask, b.mask)


class TestSerial:
    def test_results_aligned_with_inputs(self, images, serial):
        assert isinstance(serial, ManyResult)
        assert len(serial) == 3
        assert serial.succeeded == [0, 1, 2]
        assert serial.failed == []
        assert serial.errors == {}
        assert serial.names == ["exposure 0", "exposure 1", "exposure 2"]
        assert serial.kernel_paths == [None, None, None]
        assert serial.output_dir is None
        assert all(d > 0 for d in serial.durations)
        assert serial.elapsed >= max(serial.durations)
        assert serial.matched == serial.results
        for image, result in zip(images, serial.results, strict=True):
            assert isinstance(result, MatchResult)
            assert result.matched.shape == image.shape
            assert result.matched.wcs.wcs.crpix[0] == image.wcs.wcs.crpix[0]
        assert repr(serial).startswith("<ManyResult 3 exposure(s): 3 matched, 0 failed, ")

    def test_same_as_matching_one_by_one(self, images, serial):
        matcher = ModelPsfMatcher(CONFIG)
        expected = [matcher.match(image, TARGET) for image in images]
        assert_same_results(serial.results, expected)

    def test_source_psfs_override(self, images):
        # a PSF given for exposure 1 replaces its own; None keeps exposure 0's
        other = CircularGaussianPRF(fwhm=2.0)
        many = match_many(images[:2], TARGET, source_psfs=[None, other], config=CONFIG,
                          progress=False)
        expected = ModelPsfMatcher(CONFIG).match(images[1], TARGET, source_psf=other)
        assert_same_results(many.results, [many.results[0], expected])

    def test_names_from_meta(self, images):
        image = images[0].copy()
        image.meta["FILENAME"] = "night1/a.fits"
        many = match_many([image], TARGET, config=CONFIG, progress=False)
        assert many.names == ["night1/a.fits"]

    def test_does_not_change_input(self, images):
        image = images[0]
        before = image.data.copy(), image.uncertainty.array.copy(), dict(image.meta)
        match_many([image], TARGET, config=CONFIG, progress=False)
        np.testing.assert_array_equal(image.data, before[0])
        np.testing.assert_array_equal(image.uncertainty.array, before[1])
        assert dict(image.meta) == before[2]


class TestFailures:
    def test_failing_exposures_are_reported_and_the_rest_complete(self, images, serial,
                                                                   tmp_path, caplog):
        missing = str(tmp_path / "missing.fits")
        no_psf = make_image(5, psf=False)
        inputs = [images[0], missing, no_psf, images[2]]
        with caplog.at_level(logging.WARNING, logger="astropy.astropsfmatch"):
            many = match_many(inputs, TARGET, config=CONFIG, progress=False)
        assert many.succeeded == [0, 3]
        assert many.failed == [1, 2]
        assert many.results[1] is None and many.results[2] is None
        assert set(many.errors) == {missing, "exposure 2"}
        assert many.errors[missing].startswith("FileNotFoundError")
        assert "the image has no PSF" in many.errors["exposure 2"]
        assert_same_results([many.results[0], many.results[3]],
                            [serial.results[0], serial.results[2]])
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(f"exposure {missing!r} failed: FileNotFoundError" in m for m in messages)
        assert any("exposure 'exposure 2' failed: ValueError" in m for m in messages)
        assert repr(many).startswith("<ManyResult 4 exposure(s): 2 matched, 2 failed, ")

    def test_a_failing_solution(self, images):
        # a kernel too large for the PSF stamps fails every exposure, each reported
        config = CONFIG.replace(kernel_basis="alard-lupton", kernel_size=41, auto_pad_psf=False)
        many = match_many(images[:2], TARGET, config=config, progress=False)
        assert many.failed == [0, 1]
        assert all(m.startswith("ValueError: ") for m in many.errors.values())


class TestOutputDir:
    def test_files_written_and_only_paths_kept(self, images, serial, tmp_path):
        out = tmp_path / "matched"
        many = match_many(images, TARGET, config=CONFIG, output_dir=out, progress=False)
        assert many.output_dir == str(out)
        assert many.results == [str(out / f"exposure_{i:04d}_matched.fits") for i in range(3)]
        assert many.kernel_paths == [str(out / f"exposure_{i:04d}_kernel.fits")
                                     for i in range(3)]
        assert sorted(os.listdir(out)) == sorted(
            os.path.basename(p) for p in many.results + many.kernel_paths)
        assert_same_results(many.results, serial.results)
        for path, kernel_path, reference in zip(many.results, many.kernel_paths,
                                                serial.results, strict=True):
            matched = CCDData.read(path)
            np.testing.assert_array_equal(matched.psf, reference.matched.psf)
            assert matched.meta["PSFMATCH"] is True
            np.testing.assert_array_equal(fits.getdata(path, "WEIGHTS"), reference.weights)
            kernel = SpatialKernel.read(kernel_path)
            np.testing.assert_array_equal(kernel.evaluate(50.0, 60.0),
                                          reference.kernel.evaluate(50.0, 60.0))

    def test_existing_outputs(self, images, tmp_path):
        match_many(images[:1], TARGET, config=CONFIG, output_dir=tmp_path, progress=False)
        again = match_many(images[:1], TARGET, config=CONFIG, output_dir=tmp_path,
                           progress=False)
        assert again.failed == [0]
        assert again.errors["exposure 0"].startswith("FileExistsError: output file")
        assert "overwrite=True" in again.errors["exposure 0"]
        replaced = match_many(images[:1], TARGET, config=CONFIG, output_dir=tmp_path,
                              progress=False, overwrite=True)
        assert replaced.succeeded == [0]
        assert not [name for name in os.listdir(tmp_path) if name.endswith(".part")]

    def test_fits_inputs_and_names(self, paths, serial, tmp_path):
        many = match_many(paths, TARGET, config=CONFIG, output_dir=tmp_path, progress=False)
        assert many.names == paths
        assert many.results == [str(tmp_path / f"raw_{i}_matched.fits") for i in range(3)]
        assert_same_results(many.results, serial.results)

    def test_repeated_stems_get_an_index(self, images, paths, tmp_path):
        copy = tmp_path / "other"
        copy.mkdir()
        second = copy / "raw_0.fits"
        images[0].write(second)
        many = match_many([paths[0], str(second)], TARGET, config=CONFIG,
                          output_dir=tmp_path / "out", progress=False)
        assert [os.path.basename(p) for p in many.results] == [
            "0000_raw_0_matched.fits", "0001_raw_0_matched.fits"]

    def test_given_names(self, images, tmp_path):
        many = match_many(images[:2], TARGET, config=CONFIG, output_dir=tmp_path,
                          names=["night 1/a", "b.fits"], progress=False)
        assert many.names == ["night 1/a", "b.fits"]
        assert [os.path.basename(p) for p in many.results] == ["a_matched.fits",
                                                               "b_matched.fits"]

    def test_read_kwargs(self, images, tmp_path):
        path = tmp_path / "nounit.fits"
        hdul = images[0].to_hdu()
        del hdul[0].header["BUNIT"]
        hdul.writeto(path)
        failed = match_many([str(path)], TARGET, config=CONFIG, progress=False)
        assert "unit" in failed.errors[str(path)]
        many = match_many([str(path)], TARGET, config=CONFIG, progress=False,
                          read_kwargs={"unit": "adu"})
        assert many.results[0].matched.unit == "adu"


class TestProgress:
    def test_tqdm_bar(self, images, capsys):
        pytest.importorskip("tqdm")
        match_many(images[:1], TARGET, config=CONFIG, progress=True)
        assert "match_many" in capsys.readouterr().err

    def test_log_without_tqdm(self, images, monkeypatch, caplog):
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
        with caplog.at_level(logging.INFO, logger="astropy.astropsfmatch"):
            match_many(images[:1] + ["missing.fits"], TARGET, config=CONFIG, progress=True)
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert "match_many: 1/2 matched exposure 0" in messages
        assert "match_many: 2/2 FAILED missing.fits" in messages

    def test_silent(self, images, capsys, caplog):
        with caplog.at_level(logging.INFO, logger="astropy.astropsfmatch"):
            match_many(images[:1], TARGET, config=CONFIG, progress=False)
        assert "match_many" not in capsys.readouterr().err
        assert not [r for r in caplog.records if r.levelno == logging.INFO]


class TestSequence:
    """ManyResult is a sequence of the per-exposure results."""

    def test_iteration_and_indexing(self, serial):
        assert list(serial) == serial.results
        assert [serial[i] for i in range(len(serial))] == serial.results
        assert serial[-1] is serial.results[2]
        assert list(reversed(serial)) == serial.results[::-1]
        assert serial.results[1] in serial
        assert serial.index(serial.results[1]) == 1
        with pytest.raises(IndexError, match="list index out of range"):
            serial[3]

    def test_slices_are_many_results(self, images, serial, tmp_path):
        many = match_many([images[0], tmp_path / "missing.fits", images[2]], TARGET,
                          config=CONFIG, progress=False)
        part = many[1:]
        assert isinstance(part, ManyResult)
        assert len(part) == 2
        assert part.names == many.names[1:]
        assert part.results == many.results[1:]
        assert part.failed == [0] and part.succeeded == [1]
        assert set(part.errors) == {str(tmp_path / "missing.fits")}
        assert many[:1].errors == {}
        assert part.durations == many.durations[1:]
        assert part.kernel_paths == [None, None]
        assert many[::2].names == ["exposure 0", "exposure 2"]
        assert many[5:].results == [] and len(many[5:]) == 0

    def test_slice_coadds_like_the_whole(self, images, serial):
        whole = coadd(serial[:2], images[0].wcs, SHAPE)
        same = coadd(serial.results[:2], images[0].wcs, SHAPE)
        np.testing.assert_array_equal(whole.data, same.data)

    def test_a_many_result_of_paths_is_a_list_of_images(self, images, tmp_path):
        written = match_many(images[:2], TARGET, config=CONFIG, output_dir=tmp_path,
                             progress=False)
        again = match_many(written, TARGET, config=CONFIG, progress=False)
        assert again.names == written.results
        assert again.succeeded == [0, 1]


class TestWarnings:
    def test_collected_once_each_after_the_bar(self, images, caplog, capsys):
        pytest.importorskip("tqdm")
        with caplog.at_level(logging.WARNING, logger="astropy.astropsfmatch"), \
                warnings.catch_warnings():
            warnings.simplefilter("error")   # nothing escapes match_many
            many = match_many(images, TARGET, config=WARNING_CONFIG, progress=True)
        assert many.succeeded == [0, 1, 2]
        assert list(many.warnings) == many.names
        for records in many.warnings.values():
            assert [w.category.__name__ for w in records] == ["AstropyUserWarning"]
            assert "using spatial_order 1" in str(records[0].message)
        [(category, message, names)] = many.warning_summary
        assert category.__name__ == "AstropyUserWarning"
        assert names == many.names
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(lines) == 1
        assert lines[0].startswith("match_many: AstropyUserWarning in 3 of 3 exposure(s) "
                                   "('exposure 0', 'exposure 1', 'exposure 2'): spatial_order 2")
        # the bar is finished (closed) before anything is logged
        assert "3/3" in capsys.readouterr().err
        assert repr(many).startswith("<ManyResult 3 exposure(s): 3 matched, 0 failed, "
                                     "3 with warnings, ")

    def test_no_warnings(self, serial):
        assert serial.warnings == {}
        assert serial.warning_summary == []

    def test_distinct_warnings_and_long_name_lists(self, images, caplog):
        # a wider image has another grid: a second, different message
        wide = CCDData(np.zeros((192, 288)), unit="electron", psf=images[0].psf)
        inputs = [images[0]] * 6 + [wide]
        names = [f"e{i}" for i in range(7)]
        with caplog.at_level(logging.WARNING, logger="astropy.astropsfmatch"):
            many = match_many(inputs, TARGET, config=WARNING_CONFIG, progress=False,
                              names=names)
        [(_, first, six), (_, second, one)] = many.warning_summary
        assert (six, one) == (names[:6], ["e6"])
        assert "(2, 2) cells" in first and "(2, 3) cells" in second
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(lines) == 2
        assert "in 6 of 7 exposure(s) ('e0', 'e1', 'e2', 'e3', 'e4' and 1 more)" in lines[0]
        assert "in 1 of 7 exposure(s) ('e6')" in lines[1]

    def test_failures_logged_after_the_warnings(self, images, tmp_path, caplog):
        missing = str(tmp_path / "missing.fits")
        with caplog.at_level(logging.WARNING, logger="astropy.astropsfmatch"):
            many = match_many([images[0], missing], TARGET, config=WARNING_CONFIG,
                              progress=False)
        assert list(many.warnings) == ["exposure 0"]
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(lines) == 2
        assert "AstropyUserWarning in 1 of 2 exposure(s) ('exposure 0')" in lines[0]
        assert lines[1].startswith(f"match_many: exposure {missing!r} failed: FileNotFoundError")

    def test_user_filters_restored(self, images):
        before = warnings.filters[:], warnings.showwarning
        match_many(images[:1], TARGET, config=WARNING_CONFIG, progress=False)
        assert (warnings.filters[:], warnings.showwarning) == before

    def test_records_pickle(self, images):
        many = match_many(images[:1], TARGET, config=WARNING_CONFIG, progress=False)
        [record] = pickle.loads(pickle.dumps(many.warnings))["exposure 0"]
        assert "spatial_order" in str(record.message)

    def test_threads_keep_their_own_warnings(self, images):
        # two matches at once in two threads of one process, as in a dask worker
        from astropsfmatch._workflow.many import _match_one

        outcomes = {}

        def run(key, config):
            outcomes[key] = _match_one(images[0], TARGET, None, config, 1.0, None, False, {})

        threads = [threading.Thread(target=run, args=("warns", WARNING_CONFIG)),
                   threading.Thread(target=run, args=("quiet", CONFIG))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes["warns"].ok and outcomes["quiet"].ok
        assert [str(w.message)[:16] for w in outcomes["warns"].warnings] == ["spatial_order 2 "]
        assert outcomes["quiet"].warnings == []


class TestPoorMatches:
    def test_recorded_as_errors_by_default(self, images, tmp_path, caplog):
        with caplog.at_level(logging.WARNING, logger="astropy.astropsfmatch"):
            many = match_many(images[:2], TARGET, config=POOR_CONFIG, progress=False,
                              output_dir=tmp_path)
        assert many.failed == [0, 1]
        assert all(m.startswith("MatchQualityWarning: ") for m in many.errors.values())
        assert many.warnings == {}
        assert os.listdir(tmp_path) == []   # nothing written for a poor match
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(lines) == 2
        assert all("failed: MatchQualityWarning: " in line for line in lines)

    def test_kept_when_asked(self, images, tmp_path):
        many = match_many(images[:2], TARGET, config=POOR_CONFIG, progress=False,
                          output_dir=tmp_path, keep_poor_matches=True)
        assert many.succeeded == [0, 1]
        assert many.errors == {}
        assert all(os.path.exists(p) for p in many.results)
        for records in many.warnings.values():
            assert [w.category for w in records] == [MatchQualityWarning]
        # the measured residual is in the message: one entry per distinct message
        summary = many.warning_summary
        assert {category for category, _, _ in summary} == {MatchQualityWarning}
        assert sorted(name for _, _, names in summary for name in names) == many.names

    def test_keep_poor_matches_is_a_bool(self, images):
        with pytest.raises(TypeError, match="keep_poor_matches must be True or False"):
            match_many(images, TARGET, keep_poor_matches="yes")


class TestDask:
    """The same calls on a dask.distributed LocalCluster of two workers."""

    @pytest.fixture(scope="class")
    @classmethod
    def client(cls):
        distributed = pytest.importorskip("distributed")
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as client:
            yield client

    def test_equals_serial(self, images, serial, client):
        many = match_many(images, TARGET, config=CONFIG, client=client, progress=False)
        assert many.succeeded == [0, 1, 2]
        assert_same_results(many.results, serial.results)

    def test_warnings_and_poor_matches(self, images, client):
        many = match_many(images, TARGET, config=WARNING_CONFIG, client=client, progress=False)
        assert list(many.warnings) == many.names
        [(_, message, names)] = many.warning_summary
        assert message.startswith("spatial_order 2") and names == many.names
        poor = match_many(images[:2], TARGET, config=POOR_CONFIG, client=client,
                          progress=False)
        assert poor.failed == [0, 1]
        assert all(m.startswith("MatchQualityWarning: ") for m in poor.errors.values())

    def test_failures_and_output_dir(self, images, paths, serial, client, tmp_path):
        inputs = [paths[0], str(tmp_path / "missing.fits"), images[2], make_image(7, psf=False)]
        many = match_many(inputs, TARGET, config=CONFIG, client=client, progress=False,
                          output_dir=tmp_path / "out")
        assert many.succeeded == [0, 2]
        assert many.errors[inputs[1]].startswith("FileNotFoundError")
        assert "the image has no PSF" in many.errors["exposure 3"]
        assert all(isinstance(p, str) and os.path.exists(p) for p in many.matched)
        assert_same_results(many.matched, [serial.results[0], serial.results[2]])

    def test_bounded_submission(self, images, serial, client, monkeypatch):
        # one task in flight at a time still matches everything, in input order
        monkeypatch.setattr("astropsfmatch._workflow.many._TASKS_PER_THREAD", 0)
        many = match_many(images, TARGET, config=CONFIG, client=client, progress=False)
        assert_same_results(many.results, serial.results)

    def test_worker_processes(self, paths, serial, tmp_path):
        """Worker processes read the FITS files and write the results themselves."""
        distributed = pytest.importorskip("distributed")
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as client:
            many = match_many(paths, TARGET, config=CONFIG, client=client, progress=False,
                              output_dir=tmp_path)
            in_memory = match_many(paths[:1], TARGET, config=CONFIG, client=client,
                                   progress=False)
        assert many.succeeded == [0, 1, 2]
        # other processes may use other thread counts (BLAS, numba): rounding differs
        assert_same_results(many.results, serial.results, exact=False)
        assert_same_results(in_memory.results, serial.results[:1], exact=False)


class TestErrors:
    @pytest.mark.parametrize("images", [make_image(0), "a.fits", 3, CircularGaussianPRF()])
    def test_images_not_a_sequence(self, images):
        with pytest.raises(TypeError, match="images must be a sequence of CCDData"):
            match_many(images, TARGET)

    def test_source_psfs_length(self, images):
        with pytest.raises(ValueError, match=r"source_psfs must have one entry per exposure: "
                                             r"got 1 for 3"):
            match_many(images, TARGET, source_psfs=[TARGET])

    def test_source_psfs_type(self, images):
        with pytest.raises(TypeError, match="source_psfs must be None or a sequence"):
            match_many(images, TARGET, source_psfs=TARGET)

    def test_config_type(self, images):
        with pytest.raises(TypeError, match="config must be a MatchConfig or None, got dict"):
            match_many(images, TARGET, config={"cell_size": 64})

    def test_client_type(self, images):
        pytest.importorskip("distributed")
        with pytest.raises(TypeError, match="client must be a dask.distributed.Client or None"):
            match_many(images, TARGET, client="tcp://localhost:8786", progress=False)

    def test_target_psf(self, images):
        with pytest.raises(TypeError, match="target_psf must be a photutils PSF model"):
            match_many(images, "not a psf")

    @pytest.mark.parametrize("kernel_sum", [0.0, -1.0, np.nan, "1"])
    def test_kernel_sum(self, images, kernel_sum):
        with pytest.raises(ValueError, match="kernel_sum must be a finite number > 0"):
            match_many(images, TARGET, kernel_sum=kernel_sum)

    def test_names(self, images):
        with pytest.raises(ValueError, match=r"names must have one entry per exposure"):
            match_many(images, TARGET, names=["a"])
        with pytest.raises(ValueError, match=r"names must be unique, got repeated name\(s\) "
                                             r"\['a'\]"):
            match_many(images, TARGET, names=["a", "b", "a"])
