"""Error types that carry a user-facing message (file, record, what was expected)."""


class DataError(ValueError):
    """Input data (a file, a record, a field) is missing or malformed."""


class ConfigError(ValueError):
    """A configuration value is invalid or names something that does not exist."""


class CheckpointError(ValueError):
    """An adapter checkpoint does not match the model it is loaded into."""
