import dataclasses
import json
import re

import numpy as np
import pytest

from astropsfmatch import MatchConfig

# The reference defaults (DESIGN section 2), one entry per field.
DEFAULTS = {
    "kernel_basis": "auto",
    "kernel_size": None,
    "scale_by_fwhm": False,
    "kernel_size_fwhm_scaling": 6.0,
    "kernel_size_min": 21,
    "kernel_size_max": None,
    "alard_sigmas": (0.7, 1.5, 3.0),
    "alard_degrees": (4, 2, 2),
    "alard_min_sigma": 0.7,
    "alard_min_sigma_deconv": 0.4,
    "alard_degree_deconv": None,
    "alard_gauss_beta": 2.0,
    "spatial_model": "auto",
    "spatial_order": 2,
    "node_subdivision": None,
    "node_spacing_min": None,
    "cell_size": (128, 128),
    "grow_cells": 0,
    "auto_pad_psf": True,
    "auto_pad_psf_to": 1.4,
    "pad_psf_by": 0,
    "psf_size": None,
    "stamp_size": None,
    "use_pca_for_spatial_kernel": False,
    "num_principal_components": 5,
    "subtract_mean_for_pca": True,
    "use_regularization": True,
    "regularization_type": "central-difference",
    "central_regularization_stencil": 9,
    "forward_regularization_orders": (1, 2),
    "regularization_border_penalty": 3.0,
    "lambda_type": "relative",
    "lambda_value": 0.2,
    "lambda_scaling": 1e-4,
    "check_condition_number": False,
    "max_condition_number": None,
    "condition_number_type": "eigenvalue",
    "max_spatial_condition_number": None,
    "constant_variance_weighting": True,
    "max_residual": 1e-2,
    "heldout_positions": 1024,
    "variance_tolerance": 1e-4,
}

BOOL_FIELDS = [name for name, value in DEFAULTS.items() if isinstance(value, bool)]

# (field, bad value, what the message must say is allowed)
BAD_VALUES = [
    ("kernel_basis", "gaussian", "one of 'auto', 'alard-lupton', 'delta-function'"),
    ("kernel_basis", None, "one of 'auto', 'alard-lupton', 'delta-function'"),
    ("kernel_size", 20, "None or an odd integer >= 3"),
    ("kernel_size", 1, "None or an odd integer >= 3"),
    ("kernel_size", -21, "None or an odd integer >= 3"),
    ("kernel_size", 21.0, "None or an odd integer >= 3"),
    ("kernel_size", "21", "None or an odd integer >= 3"),
    ("kernel_size", True, "None or an odd integer >= 3"),
    ("kernel_size_fwhm_scaling", 0, "a finite number > 0"),
    ("kernel_size_fwhm_scaling", np.inf, "a finite number > 0"),
    ("kernel_size_min", 20, "an odd integer >= 3"),
    ("kernel_size_max", 1, "None or an odd integer >= 3"),
    ("alard_sigmas", (), "a non-empty sequence of finite numbers >= 0.25, all different"),
    ("alard_sigmas", (0.7, -1.5, 3.0), "a non-empty sequence of finite numbers >= 0.25"),
    ("alard_sigmas", (0.7, np.nan, 3.0), "a non-empty sequence of finite numbers >= 0.25"),
    ("alard_sigmas", 1.5, "a non-empty sequence of finite numbers >= 0.25"),
    ("alard_sigmas", "0.7", "a non-empty sequence of finite numbers >= 0.25"),
    ("alard_sigmas", (1.5, 1.5), "a non-empty sequence of finite numbers >= 0.25, all different"),
    ("alard_sigmas", (1e-6, 1.5), "a non-empty sequence of finite numbers >= 0.25"),
    ("alard_degrees", (4, -2, 2), "a non-empty sequence of integers >= 0"),
    ("alard_degrees", (4, 2.0, 2), "a non-empty sequence of integers >= 0"),
    ("alard_degrees", [], "a non-empty sequence of integers >= 0"),
    ("alard_min_sigma", 0.0, "a finite number > 0"),
    ("alard_min_sigma_deconv", -0.4, "a finite number > 0"),
    ("alard_degree_deconv", -1, "None or an integer >= 0"),
    ("alard_degree_deconv", 3.5, "None or an integer >= 0"),
    ("alard_gauss_beta", 1.0, "a finite number > 1"),
    ("spatial_model", "chebyshev2", "one of 'auto', 'bilinear', 'chebyshev1', 'polynomial'"),
    ("node_subdivision", 0, "None or an integer >= 1"),
    ("node_subdivision", 2.0, "None or an integer >= 1"),
    ("node_spacing_min", 0.0, "None or a finite number > 0"),
    ("node_spacing_min", np.inf, "None or a finite number > 0"),
    ("spatial_order", -1, "an integer >= 0"),
    ("spatial_order", 2.0, "an integer >= 0"),
    ("cell_size", 31, "an integer >= 32 or a pair (ny, nx) of integers >= 32"),
    ("grow_cells", -1, "an integer >= 0"),
    ("grow_cells", 1.5, "an integer >= 0"),
    ("cell_size", (128, 16), "an integer >= 32 or a pair (ny, nx) of integers >= 32"),
    ("cell_size", (128, 128, 128), "an integer >= 32 or a pair (ny, nx) of integers >= 32"),
    ("cell_size", (128.0, 128.0), "an integer >= 32 or a pair (ny, nx) of integers >= 32"),
    ("cell_size", "128", "an integer >= 32 or a pair (ny, nx) of integers >= 32"),
    ("cell_size", np.array(128), "an integer >= 32 or a pair (ny, nx) of integers >= 32"),
    ("auto_pad_psf_to", 0.9, "a number in [1, 2]"),
    ("auto_pad_psf_to", 2.5, "a number in [1, 2]"),
    ("pad_psf_by", 1, "an even integer >= 0"),
    ("pad_psf_by", -2, "an even integer >= 0"),
    ("psf_size", 30, "None or an odd integer >= 3"),
    ("psf_size", 1, "None or an odd integer >= 3"),
    ("stamp_size", 30, "None or an odd integer >= 3"),
    ("num_principal_components", 0, "an integer >= 1"),
    ("regularization_type", "backward-difference", "one of 'central-difference'"),
    ("central_regularization_stencil", 7, "one of 5, 9"),
    ("central_regularization_stencil", 9.0, "one of 5, 9"),
    ("forward_regularization_orders", (), "a non-empty set of distinct integers from {1, 2, 3}"),
    ("forward_regularization_orders", (0, 1), "a non-empty set of distinct integers from"),
    ("forward_regularization_orders", (1, 4), "a non-empty set of distinct integers from"),
    ("forward_regularization_orders", (1, 1), "a non-empty set of distinct integers from"),
    ("forward_regularization_orders", 1, "a non-empty set of distinct integers from"),
    ("regularization_border_penalty", -3.0, "a finite number >= 0"),
    ("lambda_type", "Absolute", "one of 'absolute', 'relative', 'adaptive'"),
    ("lambda_value", -0.2, "a finite number >= 0"),
    ("lambda_value", np.nan, "a finite number >= 0"),
    ("lambda_value", 10**400, "a finite number >= 0"),
    ("lambda_scaling", 0.0, "a finite number > 0"),
    ("max_condition_number", 0.0, "None or a finite number > 0"),
    ("max_condition_number", "5e7", "None or a finite number > 0"),
    ("condition_number_type", "norm", "one of 'eigenvalue', 'svd'"),
    ("max_spatial_condition_number", -1e10, "None or a finite number > 0"),
    ("max_residual", 0.0, "a finite number > 0"),
    ("max_residual", np.nan, "a finite number > 0"),
    ("heldout_positions", 0, "an integer >= 1"),
    ("variance_tolerance", -1e-4, "a finite number >= 0"),
    ("variance_tolerance", np.inf, "a finite number >= 0"),
] + [(name, bad, "True or False") for name in BOOL_FIELDS for bad in (1, "yes", None)]


class TestDefaults:
    def test_every_field_is_listed(self):
        assert [field.name for field in dataclasses.fields(MatchConfig)] == list(DEFAULTS)
        assert {name for name, _, _ in BAD_VALUES} == set(DEFAULTS)

    @pytest.mark.parametrize(("name", "default"), DEFAULTS.items())
    def test_default(self, name, default):
        value = getattr(MatchConfig(), name)
        assert value == default
        assert type(value) is type(default)

    def test_effective_max_condition_number(self):
        # three significant digits kept by a double-precision solve
        assert MatchConfig().effective_max_condition_number == pytest.approx(4.5036e12, rel=1e-4)
        assert MatchConfig().effective_max_spatial_condition_number == pytest.approx(4.5036e12,
                                                                                    rel=1e-4)
        config = MatchConfig(kernel_basis="delta-function", max_condition_number=1e3)
        assert config.effective_max_condition_number == 1e3
        spatial = MatchConfig(max_spatial_condition_number=1e10)
        assert spatial.effective_max_spatial_condition_number == 1e10


class TestValidation:
    @pytest.mark.parametrize(("name", "value", "allowed"), BAD_VALUES)
    def test_bad_value(self, name, value, allowed):
        with pytest.raises(ValueError, match=rf"^{name} must be {re.escape(allowed)}.*, got "):
            MatchConfig(**{name: value})

    @pytest.mark.parametrize(("name", "value", "allowed"), BAD_VALUES)
    def test_bad_value_through_replace(self, name, value, allowed):
        with pytest.raises(ValueError, match=rf"^{name} must be {re.escape(allowed)}"):
            MatchConfig().replace(**{name: value})

    def test_message_shows_value(self):
        with pytest.raises(ValueError,
                           match=r"kernel_size must be None or an odd integer >= 3, got 20$"):
            MatchConfig(kernel_size=20)

    def test_sigma_degree_length_mismatch(self):
        with pytest.raises(ValueError, match="alard_sigmas and alard_degrees must have the same"):
            MatchConfig(alard_sigmas=(1.0, 2.0), alard_degrees=(4, 2, 2))
        with pytest.raises(ValueError, match=r"\(2 values\) and alard_degrees=\(4,\) \(1 values\)"):
            MatchConfig(alard_sigmas=(1.0, 2.0), alard_degrees=(4,))

    def test_kernel_size_min_above_max(self):
        with pytest.raises(
            ValueError, match="kernel_size_min must be <= kernel_size_max, got kernel_size_min=37"
        ):
            MatchConfig(kernel_size_min=37, kernel_size_max=35)

    def test_positional_arguments_rejected(self):
        with pytest.raises(TypeError, match="positional"):
            MatchConfig("alard-lupton")

    def test_frozen(self):
        config = MatchConfig()
        with pytest.raises(dataclasses.FrozenInstanceError, match="kernel_size"):
            config.kernel_size = 25


class TestDeprecated:
    def test_alard_degree_deconv_warns(self):
        from astropy.utils.exceptions import AstropyDeprecationWarning

        with pytest.warns(AstropyDeprecationWarning, match="alard_degree_deconv is deprecated"):
            MatchConfig(alard_degree_deconv=3)


class TestNormalization:
    def test_cell_size_int_is_square(self):
        assert MatchConfig(cell_size=64).cell_size == (64, 64)

    def test_cell_size_order_is_ny_nx(self):
        assert MatchConfig(cell_size=[64, 96]).cell_size == (64, 96)

    def test_numpy_values(self):
        config = MatchConfig(
            kernel_size=np.int64(25),
            cell_size=np.array([64, 96]),
            alard_sigmas=np.array([1.0, 2.0]),
            alard_degrees=np.array([3, 1]),
            lambda_value=np.float32(0.5),
            auto_pad_psf=np.True_,
        )
        assert config.kernel_size == 25
        assert type(config.kernel_size) is int
        assert config.cell_size == (64, 96)
        assert all(type(item) is int for item in config.cell_size)
        assert config.alard_sigmas == (1.0, 2.0)
        assert all(type(item) is float for item in config.alard_sigmas)
        assert config.alard_degrees == (3, 1)
        assert type(config.lambda_value) is float
        assert config.auto_pad_psf is True

    def test_sequences_become_tuples(self):
        config = MatchConfig(alard_sigmas=[1, 2], alard_degrees=[2, 1])
        assert config.alard_sigmas == (1.0, 2.0)
        assert config.alard_degrees == (2, 1)

    def test_integer_floats_accepted(self):
        config = MatchConfig(lambda_value=1, auto_pad_psf_to=2, max_condition_number=10)
        assert config.lambda_value == 1.0
        assert type(config.lambda_value) is float
        assert config.auto_pad_psf_to == 2.0
        assert config.max_condition_number == 10.0

    @pytest.mark.parametrize("orders", [(3, 1), [1, 3], {1, 3}, frozenset({3, 1})])
    def test_forward_orders_sorted(self, orders):
        assert MatchConfig(forward_regularization_orders=orders).forward_regularization_orders == (
            1,
            3,
        )

    @pytest.mark.parametrize("size", [3, 5, 41])
    def test_psf_size(self, size):
        assert MatchConfig(psf_size=size).psf_size == size

    def test_hashable_and_equal(self):
        assert MatchConfig(cell_size=64) == MatchConfig(cell_size=(64, 64))
        assert hash(MatchConfig(cell_size=64)) == hash(MatchConfig(cell_size=(64, 64)))


class TestRoundTrip:
    CONFIGS = [
        {},
        {"kernel_basis": "delta-function", "max_condition_number": 1e6, "psf_size": 41},
        {"cell_size": 64, "alard_sigmas": (1.0,), "alard_degrees": (0,)},
        {"forward_regularization_orders": (3,), "lambda_type": "absolute", "lambda_scaling": 1e-3},
        {"spatial_model": "bilinear", "node_subdivision": 4, "max_residual": 1e-3},
    ]

    @pytest.mark.parametrize("options", CONFIGS)
    def test_dict(self, options):
        config = MatchConfig(**options)
        assert MatchConfig.from_dict(config.to_dict()) == config

    @pytest.mark.parametrize("options", CONFIGS)
    def test_json(self, options):
        config = MatchConfig(**options)
        text = json.dumps(config.to_dict())
        assert MatchConfig.from_dict(json.loads(text)) == config

    def test_to_dict_is_plain(self):
        options = MatchConfig().to_dict()
        assert list(options) == list(DEFAULTS)
        assert options["cell_size"] == [128, 128]
        assert options["alard_sigmas"] == [0.7, 1.5, 3.0]
        assert options["forward_regularization_orders"] == [1, 2]
        assert options["max_condition_number"] is None
        assert not any(isinstance(value, tuple) for value in options.values())

    def test_from_dict_partial_uses_defaults(self):
        config = MatchConfig.from_dict({"kernel_size": 25})
        assert config == MatchConfig(kernel_size=25)

    def test_from_dict_unknown_key(self):
        with pytest.raises(ValueError, match="unknown MatchConfig option.*'kernel_sise'"):
            MatchConfig.from_dict({"kernel_sise": 25})

    def test_from_dict_not_a_mapping(self):
        with pytest.raises(ValueError, match="options must be a mapping"):
            MatchConfig.from_dict([("kernel_size", 25)])

    def test_from_dict_bad_value(self):
        with pytest.raises(ValueError, match="cell_size must be"):
            MatchConfig.from_dict({"cell_size": [16, 16]})

    def test_from_dict_does_not_change_input(self):
        options = MatchConfig().to_dict()
        before = json.dumps(options)
        MatchConfig.from_dict(options)
        assert json.dumps(options) == before


class TestReplace:
    def test_replace_returns_new_validated(self):
        config = MatchConfig()
        new = config.replace(kernel_size=25, cell_size=64)
        assert new.kernel_size == 25
        assert new.cell_size == (64, 64)
        assert config.kernel_size is None
        assert config == MatchConfig()

    def test_replace_unknown(self):
        with pytest.raises(ValueError, match="unknown MatchConfig option.*'spatial_ordr'"):
            MatchConfig().replace(spatial_ordr=1)

    def test_replace_cross_field(self):
        with pytest.raises(ValueError, match="alard_sigmas and alard_degrees"):
            MatchConfig().replace(alard_degrees=(4, 2))
