"""Settings, the site registry and the duty roster: pydantic-settings models with validators,
their TOML loaders and the bundled examples. A bad file stops the start with the file, the key
and the reason (``ConfigError``). Imports only the ground floor (``geowarn.core``)."""
