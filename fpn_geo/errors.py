"""One short exception hierarchy; each message names what was got, what was expected and the fix."""


class FpnGeoError(Exception):
    """Base of every error fpn-geo raises on purpose; the CLI prints it on one line."""


class InputError(FpnGeoError):
    """The input scene cannot be used (missing, corrupt, no CRS, wrong bands...)."""


class CheckpointError(FpnGeoError):
    """A checkpoint is unreadable or does not match its architecture or the scene."""


class ConfigError(FpnGeoError):
    """A configuration file or flag has a wrong key or value."""


class OutputError(FpnGeoError):
    """The output cannot be written where it was asked for."""


class ModelInputError(FpnGeoError, ValueError):
    """A tensor given to the model has the wrong shape."""
