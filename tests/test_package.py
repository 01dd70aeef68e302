import logging
from importlib.metadata import requires, version

import pytest
from astropy import log as astropy_log
from packaging.requirements import Requirement
from packaging.version import Version

import astropsfmatch
from astropsfmatch import log


class TestVersion:
    def test_version_is_a_pep440_string(self):
        assert isinstance(astropsfmatch.__version__, str)
        assert Version(astropsfmatch.__version__) >= Version("0.1.dev0")

    def test_version_matches_installed_metadata(self):
        assert astropsfmatch.__version__ == version("astropsfmatch")


class TestLogger:
    def test_name(self):
        assert log.name == "astropy.astropsfmatch"

    def test_child_of_astropy_logger(self):
        assert log.parent is astropy_log
        assert isinstance(log, logging.Logger)

    def test_messages_reach_astropy_handlers(self):
        with astropy_log.log_to_list() as messages:
            log.warning("a test message")
        assert [record.getMessage() for record in messages] == ["a test message"]
        assert messages[0].name == "astropy.astropsfmatch"


class TestDependencies:
    """The installed dependencies satisfy the declared minimums.

    Under the tox env ``py311-test-oldestdeps`` this checks that the env really
    installed the lowest versions allowed (its pins equal setup.cfg's minimums).
    """

    REQUIREMENTS = [
        Requirement(text)
        for text in requires("astropsfmatch") or []
        if Requirement(text).marker is None
    ]

    def test_core_requirements_declared(self):
        names = {requirement.name for requirement in self.REQUIREMENTS}
        assert {"numpy", "scipy", "astropy", "photutils", "numba"} <= names

    @pytest.mark.parametrize("requirement", REQUIREMENTS, ids=str)
    def test_installed_version_allowed(self, requirement):
        assert requirement.specifier.contains(version(requirement.name), prereleases=True)
