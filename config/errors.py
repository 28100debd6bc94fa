"""The configuration layer's one exception: which file, which key, and why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration: where it is and what is wrong."""

    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.reason}"


class ConfigError(Exception):
    """A configuration that must stop the start. Carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(cls, file: str | Path, key: str, reason: str) -> "ConfigError":
        return cls([ConfigProblem(str(file), key, reason)])


def problems_from_validation(file: str | Path, exc: Exception, prefix: str = "") -> list[ConfigProblem]:
    """Turn a pydantic ValidationError into problems that name the dotted/indexed key."""
    out: list[ConfigProblem] = []
    for err in exc.errors():  # type: ignore[attr-defined]
        key = prefix
        for part in err.get("loc", ()):
            if isinstance(part, int):
                key += f"[{part}]"
            else:
                key += f".{part}" if key else str(part)
        msg = err.get("msg", "invalid")
        # pydantic prefixes custom ValueErrors with "Value error, "; the officer does not need it.
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (check its spelling)"
        out.append(ConfigProblem(str(file), key, msg))
    return out
