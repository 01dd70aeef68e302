"""The package logger: ``astropy.astropsfmatch``, a child of astropy's
logger, so astropy's log configuration (level, file output, colours)
applies to it.
"""

import logging

from astropy.logger import AstropyLogger

__all__ = []  # `log` is imported by the package, not part of its __all__


def _make_logger():
    # astropy's handlers expect its own record fields ('origin'), which only
    # AstropyLogger instances add: create the child logger of that class.
    previous = logging.getLoggerClass()
    logging.setLoggerClass(AstropyLogger)
    try:
        return logging.getLogger("astropy.astropsfmatch")
    finally:
        logging.setLoggerClass(previous)


log = _make_logger()
