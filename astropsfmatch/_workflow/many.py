"""Match many exposures to one target PSF, locally or on a dask cluster: match_many."""

import os
import pickle
import re
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from astropy.modeling import Model
from astropy.nddata import CCDData, NDData

from .._adapters.files import write_hdulist, write_matched
from .._adapters.psf import as_psf
from .._logging import log
from .._optional import available, require
from .._validate import check_bool, check_type, real, sequence_of
from ..config import MatchConfig
from .matcher import ModelPsfMatcher
from .result import MatchQualityWarning

# the public names of this module, re-exported by astropsfmatch/__init__.py
__all__ = ["ManyResult", "match_many"]

#: With a dask client, at most this many tasks per worker thread are in
#: flight at once (submitted and not yet collected): enough to keep every
#: worker busy, few enough that the inputs sent to the workers and the results
#: waiting to be collected stay bounded for long lists.
_TASKS_PER_THREAD = 2

_FITS_SUFFIX = re.compile(r"\.(fits|fit|fts)(\.(gz|bz2|xz))?$", re.IGNORECASE)


@dataclass(repr=False)
class ManyResult(Sequence):
    """The outcome of `match_many`: one entry per input exposure, in input order.

    A `ManyResult` is a sequence of the per-exposure results: ``len(many)``
    is the number of exposures, ``many[i]`` is ``many.results[i]``, ``for
    result in many`` iterates over ``many.results`` (None included, for the
    exposures that failed), and a slice, ``many[2:5]``, is a `ManyResult` of
    those exposures (their names, errors, warnings, kernel paths and
    durations), which `~astropsfmatch.coadd` takes as it takes the whole.

    Attributes
    ----------
    results : list
        For each exposure: its `~astropsfmatch.MatchResult` (in-memory mode),
        the path of the matched FITS file (with ``output_dir``), or None if
        that exposure failed.
    names : list of str
        The name of each exposure, as used in ``errors`` and in the log: the
        file path, the ``names`` given to `match_many`, the ``FILENAME``
        keyword of the image's ``meta``, or ``'exposure <i>'``.
    errors : dict
        ``{name: message}`` for each exposure that failed (the exception type
        and message). Unless `match_many` was called with
        ``keep_poor_matches=True``, a match that did not reach its target
        (one that emitted a `~astropsfmatch.MatchQualityWarning`) failed
        too, with the message ``'MatchQualityWarning: ...'``.
    kernel_paths : list
        With ``output_dir``: the path of each exposure's kernel FITS file
        (`~astropsfmatch.SpatialKernel.read` restores it), None where it
        failed. Without ``output_dir``: all None.
    durations : list of float
        Wall-clock seconds spent on each exposure (reading, matching and
        writing), as measured where it ran.
    elapsed : float
        Wall-clock seconds of the whole call.
    output_dir : str or None
        Where the files were written.
    warnings : dict
        ``{name: [warning, ...]}``: the warnings (`warnings.WarningMessage`
        objects, with ``category`` and ``message``) that the matching of each
        exposure emitted, for the exposures that emitted any. `match_many`
        shows each distinct warning once, when all exposures are done;
        ``warning_summary`` groups them the same way.
    """

    results: list
    names: list
    errors: dict = field(default_factory=dict)
    kernel_paths: list = None
    durations: list = None
    elapsed: float = 0.0
    output_dir: str = None
    warnings: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.results)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            return self.results[index]
        names = self.names[index]
        kept = set(names)
        n = len(self.results)

        def part(values):
            return None if values is None else list(values[index])

        return ManyResult(
            results=list(self.results[index]), names=list(names),
            errors={k: v for k, v in self.errors.items() if k in kept},
            kernel_paths=part(self.kernel_paths if self.kernel_paths is not None
                              else [None] * n),
            durations=part(self.durations), elapsed=self.elapsed, output_dir=self.output_dir,
            warnings={k: list(v) for k, v in self.warnings.items() if k in kept})

    def __iter__(self):
        return iter(self.results)

    def __reversed__(self):
        return reversed(self.results)

    @property
    def succeeded(self):
        """Indices of the exposures that were matched."""
        return [i for i, r in enumerate(self.results) if r is not None]

    @property
    def failed(self):
        """Indices of the exposures that failed (their messages are in ``errors``)."""
        return [i for i, r in enumerate(self.results) if r is None]

    @property
    def matched(self):
        """The results (MatchResults or paths) of the exposures that succeeded, in order."""
        return [r for r in self.results if r is not None]

    @property
    def warning_summary(self):
        """The distinct warnings, each once: a list of ``(category, message, names)``.

        ``names`` lists the exposures (in input order) that emitted that
        warning; the list is in the order in which the warnings first
        appear.
        """
        return _summarize(self.warnings, self.names)

    def __repr__(self):
        where = f" in {self.output_dir!r}" if self.output_dir is not None else ""
        warned = f", {len(self.warnings)} with warnings" if self.warnings else ""
        return (f"<ManyResult {len(self)} exposure(s): {len(self.succeeded)} matched, "
                f"{len(self.failed)} failed{warned}{where}, {self.elapsed:.1f} s>")


@dataclass
class _Outcome:
    """What one task returns (small and picklable)."""

    ok: bool
    result: object = None
    kernel_path: str = None
    error: str = None
    duration: float = 0.0
    warnings: list = field(default_factory=list)


def match_many(images, target_psf, *, source_psfs=None, config=None, client=None,
               output_dir=None, progress=True, kernel_sum=1.0, overwrite=False, names=None,
               read_kwargs=None, keep_poor_matches=False):
    """
    Match a list of exposures to one target PSF, locally or on a dask cluster.

    Each exposure is matched with `~astropsfmatch.ModelPsfMatcher` (one
    spatially varying kernel per exposure). A failure in one exposure is
    recorded in the returned `ManyResult` and does not stop the others; so
    is, by default, a *poor match*: one that did not reach the target (it
    emitted a `~astropsfmatch.MatchQualityWarning`, see ``max_residual`` in
    `~astropsfmatch.MatchConfig`).

    The warnings that the matching emits are collected per exposure, not
    shown as they happen (they would repeat once per exposure and break up
    the progress bar): when all exposures are done, each distinct warning
    is logged once, with the number of exposures it concerns and their
    names, and then each failure. They are kept in ``result.warnings``.

    Parameters
    ----------
    images : sequence
        The exposures: `~astropy.nddata.CCDData`/`~astropy.nddata.NDData`
        objects, or paths of FITS files readable by
        `CCDData.read <astropy.nddata.CCDData.read>` (read where the
        exposure is matched: on the dask worker with ``client``).
    target_psf : photutils PSF model, astropy 2-D model or 2-D array
        The common target PSF, e.g. ``common_target_psf(...).psf``.
    source_psfs : sequence, optional
        One PSF (or None) per exposure; None uses the exposure's own ``psf``
        (for FITS files, the ``PSFIMAGE`` extension).
    config : `~astropsfmatch.MatchConfig`, optional
        Matching options, the same for every exposure.
    client : `distributed.Client`, optional
        Run one task per exposure on this dask cluster and collect the
        results as they complete. Without it, the exposures are matched one
        after the other in this process.
    output_dir : str or path-like, optional
        Write each result as soon as it is ready and keep only the paths: the
        matched image to ``<stem>_matched.fits`` (the `~astropy.nddata.CCDData`
        with ``UNCERT``, ``MASK`` and ``PSFIMAGE`` extensions, plus the
        inverse-variance weights in a ``WEIGHTS`` extension) and the kernel
        to ``<stem>_kernel.fits``; ``<stem>`` is the input file name without
        its FITS suffix, or ``exposure_<i>``. With ``client`` this directory
        must be writable by the workers (a shared file system).
    progress : bool, optional
        Show a `tqdm <https://tqdm.github.io>`_ progress bar; without tqdm
        installed, log one line per finished exposure instead.
    kernel_sum : float, optional
        Sum of every kernel (the convolution is normalized by it).
    overwrite : bool, optional
        Replace existing output files; otherwise an exposure whose output
        exists fails (before any work is done for it).
    names : sequence of str, optional
        A name for each exposure, used in messages, in ``errors`` and for the
        output file names.
    read_kwargs : dict, optional
        Keyword arguments of `CCDData.read <astropy.nddata.CCDData.read>` for
        FITS paths, e.g. ``{'unit': 'adu'}`` for files without ``BUNIT``.
    keep_poor_matches : bool, optional
        If False (the default), an exposure whose match emits a
        `~astropsfmatch.MatchQualityWarning` fails: its result is None,
        nothing is written for it, and ``errors`` holds
        ``'MatchQualityWarning: <message>'``. If True, its result is kept
        (and written) like any other and the warning is kept in
        ``warnings``.

    Returns
    -------
    result : ManyResult
        A sequence with one entry per exposure: ``result[i]`` is the
        `~astropsfmatch.MatchResult` of ``images[i]`` (or its output path
        with ``output_dir``), None if it failed; ``result.errors`` maps the
        names of failed exposures to their error messages and
        ``result.warnings`` the names of exposures to the warnings their
        matching emitted.

    Raises
    ------
    TypeError
        ``images`` is not a sequence, ``config`` not a MatchConfig,
        ``client`` not a dask client, or ``target_psf`` not a PSF.
    ValueError
        ``source_psfs`` or ``names`` of the wrong length, repeated names, a
        bad ``target_psf`` or ``kernel_sum``. (Problems of single exposures
        are not raised: they are recorded in the result.)

    Notes
    -----
    With a client, at most two tasks per worker thread are in flight at any
    time: in-memory exposures are sent to the cluster (with
    ``client.scatter``) only when a worker is about to need them, and
    results are collected (and with ``output_dir``, written by the worker)
    as they complete, so that long lists run in bounded memory. The
    matching code is compiled by numba and releases the GIL, so
    multi-threaded workers are effective too.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.nddata import CCDData
    >>> from photutils.psf import CircularGaussianPRF
    >>> from astropsfmatch import MatchConfig, match_many
    >>> images = [CCDData(np.zeros((192, 192)), unit="adu") for _ in range(3)]
    >>> psfs = [CircularGaussianPRF(fwhm=f) for f in (2.5, 3.0, 3.5)]
    >>> many = match_many(images, CircularGaussianPRF(fwhm=4.0), source_psfs=psfs,
    ...                   config=MatchConfig(cell_size=64), progress=False)
    >>> many.succeeded, many.errors, many.warnings
    ([0, 1, 2], {}, {})
    >>> many[0].matched.shape
    (192, 192)
    >>> later = many[1:]          # a ManyResult of exposures 1 and 2
    >>> later.names, [result.matched.shape for result in later]
    (['exposure 1', 'exposure 2'], [(192, 192), (192, 192)])
    """
    start = time.perf_counter()
    images = _check_images(images)
    n = len(images)
    source_psfs = _check_per_exposure(source_psfs, n, "source_psfs")
    if config is None:
        config = MatchConfig()
    check_type("config", config, MatchConfig, "a MatchConfig or None")
    if client is not None:
        _check_client(client)
    # shared inputs: a problem here is the caller's, not one exposure's
    as_psf(target_psf, name="target_psf", psf_size=config.psf_size)
    kernel_sum = real(gt=0, normal=True)("kernel_sum", kernel_sum)
    read_kwargs = dict(read_kwargs or {})
    keep_poor_matches = check_bool("keep_poor_matches", keep_poor_matches)
    names = _exposure_names(images, names)
    outputs = [None] * n
    if output_dir is not None:
        output_dir = os.fspath(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        outputs = _output_paths(images, names, output_dir)
    tasks = [(images[i], target_psf, source_psfs[i], config, kernel_sum, outputs[i], overwrite,
              read_kwargs, keep_poor_matches) for i in range(n)]

    results = [None] * n
    kernel_paths = [None] * n
    durations = [0.0] * n
    errors = {}
    caught = {}
    bar = _Progress(n, progress)

    def collect(index, outcome):
        durations[index] = outcome.duration
        if outcome.warnings:
            caught[names[index]] = outcome.warnings
        if outcome.ok:
            results[index] = outcome.result
            kernel_paths[index] = outcome.kernel_path
        else:
            errors[names[index]] = outcome.error
        bar.update(names[index], outcome.ok)

    try:
        if client is None:
            for index, task in enumerate(tasks):
                collect(index, _match_one(*task))
        else:
            _run_on_client(client, tasks, collect)
    finally:
        bar.close()
        # in input order, and only now: messages printed while the bar runs would break it up
        caught = {name: caught[name] for name in names if name in caught}
        _report(caught, errors, names)
    elapsed = time.perf_counter() - start
    log.debug(f"match_many: {n - len(errors)} of {n} exposure(s) matched in {elapsed:.2f} s")
    return ManyResult(results=results, names=names, errors=errors, kernel_paths=kernel_paths,
                      durations=durations, elapsed=elapsed, output_dir=output_dir,
                      warnings=caught)


def _summarize(caught, names):
    """Distinct warnings of ``{name: [WarningMessage]}``: ``[(category, message, names)]``."""
    groups = {}
    for name in names:
        for record in caught.get(name, ()):
            key = (record.category, str(record.message))
            concerned = groups.setdefault(key, [])
            if name not in concerned:
                concerned.append(name)
    return [(category, message, concerned) for (category, message), concerned in groups.items()]


#: At most this many exposure names are listed in a summary line.
_NAMES_SHOWN = 5


def _report(caught, errors, names):
    """Log each distinct warning once, with the exposures it concerns, then each failure."""
    n = len(names)
    for category, message, concerned in _summarize(caught, names):
        shown = ", ".join(repr(name) for name in concerned[:_NAMES_SHOWN])
        if len(concerned) > _NAMES_SHOWN:
            shown += f" and {len(concerned) - _NAMES_SHOWN} more"
        log.warning(f"match_many: {category.__name__} in {len(concerned)} of {n} "
                    f"exposure(s) ({shown}): {message}")
    for name in names:
        if name in errors:
            log.warning(f"match_many: exposure {name!r} failed: {errors[name]}")


def _run_on_client(client, tasks, collect):
    """Submit one task per exposure, a bounded number at a time; collect as they complete."""
    as_completed = require("distributed", "client= needs").as_completed

    token = uuid.uuid4().hex[:12]
    nthreads = sum(client.nthreads().values())
    window = max(_TASKS_PER_THREAD * nthreads, 1)
    live = {}  # key -> (index, future) of the tasks not collected yet

    def submit(index):
        image, *rest = tasks[index]
        if not _is_path(image):
            # sent now, to the cluster's memory, rather than embedded in the task graph
            [image] = client.scatter([image], hash=False)
        future = client.submit(_match_one, image, *rest, key=f"match_many-{token}-{index}",
                               pure=False)
        live[future.key] = (index, future)
        return future

    queue = iter(range(len(tasks)))
    running = as_completed([submit(i) for i in islice(queue, window)])
    try:
        for future in running:
            index, _ = live.pop(future.key)
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. a worker died: keep the others
                outcome = _Outcome(ok=False, error=_describe(exc))
            del future
            collect(index, outcome)
            following = next(queue, None)
            if following is not None:
                running.add(submit(following))
    finally:
        if live:  # interrupted: do not leave work running on the cluster
            client.cancel([future for _, future in live.values()])


def _check_client(client):
    distributed = require("distributed", "client= needs")
    check_type("client", client, distributed.Client, "a dask.distributed.Client or None")


def _worker_threads():
    """Threads of the dask worker running this task (None outside a worker).

    Each match would otherwise use every core, and the tasks running at once
    on one machine would oversubscribe it.
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    # distributed >= 2023 keeps it on the worker state (the attribute warns)
    state = getattr(worker, "state", None)
    threads = getattr(state, "nthreads", None) or worker.nthreads
    return int(threads)


def _match_one(image, target_psf, source_psf, config, kernel_sum, outputs, overwrite,
               read_kwargs, keep_poor_matches=False):
    """Read (if a path), match and (with outputs) write one exposure; never raises.

    The warnings emitted meanwhile are returned in the outcome, not shown.
    """
    start = time.perf_counter()
    with _capture_warnings() as caught:
        outcome = _match_and_write(image, target_psf, source_psf, config, kernel_sum, outputs,
                                   overwrite, read_kwargs, keep_poor_matches, caught)
    if not keep_poor_matches:
        caught = [w for w in caught if not issubclass(w.category, MatchQualityWarning)]
    outcome.warnings = [_picklable(w) for w in caught]
    outcome.duration = time.perf_counter() - start
    return outcome


def _match_and_write(image, target_psf, source_psf, config, kernel_sum, outputs, overwrite,
                     read_kwargs, keep_poor_matches, caught):
    try:
        if outputs is not None and not overwrite:
            for path in outputs:
                if os.path.exists(path):
                    msg = f"output file {path!r} exists (pass overwrite=True to replace it)"
                    raise FileExistsError(msg)
        if _is_path(image):
            image = CCDData.read(image, **read_kwargs)
        result = ModelPsfMatcher(config).match(image, target_psf, source_psf=source_psf,
                                               kernel_sum=kernel_sum, workers=_worker_threads())
        poor = [w for w in caught if issubclass(w.category, MatchQualityWarning)]
        if poor and not keep_poor_matches:
            # a poor match is not kept, and not written either
            return _Outcome(ok=False, error=f"MatchQualityWarning: {poor[0].message}")
        if outputs is None:
            return _Outcome(ok=True, result=result)
        matched_path, kernel_path = outputs
        write_matched(result.matched, matched_path, weights=result.weights)
        write_hdulist(result.kernel.to_hdulist(), kernel_path)
        return _Outcome(ok=True, result=matched_path, kernel_path=kernel_path)
    except Exception as exc:  # noqa: BLE001 - one bad exposure must not lose the others
        return _Outcome(ok=False, error=_describe(exc))


# Collecting the warnings of each exposure. warnings.catch_warnings changes
# process-wide state and is not thread-safe: a dask worker with several threads
# runs several matches at once. So one catch_warnings is active while any match
# runs (reference-counted), and its hook sends each warning to the list of the
# thread that emitted it; warnings of other threads are shown as before.
_capture_lock = threading.Lock()
_capture_state = {"depth": 0, "context": None, "show": None}
_capture_lists = {}  # thread id -> list of WarningMessage


def _route_warning(message, category, filename, lineno, file=None, line=None):
    records = _capture_lists.get(threading.get_ident())
    if records is not None:
        records.append(warnings.WarningMessage(message, category, filename, lineno))
    else:
        _capture_state["show"](message, category, filename, lineno, file, line)


@contextmanager
def _capture_warnings():
    """Record every warning of this thread (each time, whatever the filters say)."""
    records = []
    ident = threading.get_ident()
    with _capture_lock:
        if _capture_state["depth"] == 0:
            show = warnings.showwarning
            context = warnings.catch_warnings()
            context.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = _route_warning
            _capture_state.update(context=context, show=show)
        _capture_state["depth"] += 1
        _capture_lists[ident] = records
    try:
        yield records
    finally:
        with _capture_lock:
            del _capture_lists[ident]
            _capture_state["depth"] -= 1
            if _capture_state["depth"] == 0:
                _capture_state["context"].__exit__(None, None, None)
                _capture_state.update(context=None, show=None)


def _picklable(record):
    """A WarningMessage that survives pickling (a worker sends it back to the client)."""
    message = record.message
    try:
        pickle.dumps(message)
    except Exception:  # noqa: BLE001 - e.g. an argument that does not pickle
        message = record.category(str(message))
    return warnings.WarningMessage(message, record.category, record.filename, record.lineno)


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"


def _is_path(item):
    return isinstance(item, str | os.PathLike)


def _check_images(images):
    return sequence_of("images", images, "CCDData/NDData images or FITS paths",
                       item="image", not_items=(NDData, os.PathLike), allow_empty=True)


def _check_per_exposure(values, n, name):
    if values is None:
        return [None] * n
    values = sequence_of(name, values, "None or a sequence with one entry per exposure",
                         not_items=(Model, NDData), allow_empty=True)
    if len(values) != n:
        msg = f"{name} must have one entry per exposure: got {len(values)} for {n} exposure(s)"
        raise ValueError(msg)
    return values


def _exposure_names(images, names):
    if names is not None:
        names = [str(name) for name in _check_per_exposure(names, len(images), "names")]
        if len(set(names)) != len(names):
            repeated = sorted({name for name in names if names.count(name) > 1})
            msg = f"names must be unique, got repeated name(s) {repeated}"
            raise ValueError(msg)
        return names
    names = []
    for index, image in enumerate(images):
        if _is_path(image):
            name = os.fspath(image)
        else:
            meta = getattr(image, "meta", None) or {}
            name = meta.get("FILENAME") if hasattr(meta, "get") else None
            name = str(name) if name else f"exposure {index}"
        names.append(name)
    counts = {name: names.count(name) for name in names}
    return [f"{name} [{i}]" if counts[name] > 1 else name for i, name in enumerate(names)]


def _output_paths(images, names, output_dir):
    """(matched, kernel) output paths of each exposure; unique stems."""
    stems = []
    for index, (image, name) in enumerate(zip(images, names, strict=True)):
        if _is_path(image):
            stem = _FITS_SUFFIX.sub("", Path(image).name)
        elif name == f"exposure {index}":
            stem = f"exposure_{index:04d}"
        else:
            stem = _FITS_SUFFIX.sub("", Path(name).name)
        stems.append(re.sub(r"[^\w.+-]+", "_", stem) or f"exposure_{index:04d}")
    if len(set(stems)) != len(stems):
        stems = [f"{index:04d}_{stem}" for index, stem in enumerate(stems)]
    return [(os.path.join(output_dir, f"{stem}_matched.fits"),
             os.path.join(output_dir, f"{stem}_kernel.fits")) for stem in stems]


class _Progress:
    """A tqdm bar if tqdm is installed, else one log line per finished exposure."""

    def __init__(self, total, enabled):
        self.total = total
        self.enabled = bool(enabled)
        self.done = 0
        self.failed = 0
        self.bar = None
        if self.enabled and available("tqdm.auto"):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="match_many", unit="exposure")

    def update(self, name, ok):
        self.done += 1
        self.failed += not ok
        if not self.enabled:
            return
        if self.bar is not None:
            if self.failed:
                self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)
        else:
            status = "matched" if ok else "FAILED"
            log.info(f"match_many: {self.done}/{self.total} {status} {name}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
