"""Settings from the environment: what each variable accepts, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.errors import UsageError
from threadbot.config import Settings

from .test_cli import cli


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("2.5", 2.5), ("30", 30.0), ("90s", 90.0), ("2m", 120.0), (" 0.5 ", 0.5), ("", 120.0)],
)
def test_model_timeout_takes_seconds_and_durations(raw: str, expected: float) -> None:
    assert Settings.from_env({"THREADBOT_MODEL_TIMEOUT": raw}).model_timeout == expected


@pytest.mark.parametrize("raw", ["soon", "0", "-1", "2.5.1", "1e3", "nan", "5 parsecs"])
def test_a_bad_model_timeout_is_refused_by_name(raw: str) -> None:
    with pytest.raises(UsageError, match=r"THREADBOT_MODEL_TIMEOUT must be a number of seconds"):
        Settings.from_env({"THREADBOT_MODEL_TIMEOUT": raw})


def test_the_cli_runs_with_a_fractional_model_timeout(tmp_path: Path) -> None:
    env = {"THREADBOT_DB": str(tmp_path / "t.db"), "THREADBOT_MODEL_TIMEOUT": "2.5"}
    out = cli(env, "--local", "threads")
    assert out.returncode == 0, out.stderr
    out = cli({**env, "THREADBOT_MODEL_TIMEOUT": "soon"}, "--local", "threads")
    assert out.returncode == 1
    assert "THREADBOT_MODEL_TIMEOUT must be a number of seconds" in out.stderr
    assert "'soon'" in out.stderr


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, True),
        ("", True),
        ("on", True),
        ("ON", True),
        ("1", True),
        ("off", False),
        ("0", False),
        ("false", False),
        ("no", False),
    ],
)
def test_tune_is_on_unless_turned_off(raw: str | None, expected: bool) -> None:
    env = {} if raw is None else {"THREADBOT_TUNE": raw}
    assert Settings.from_env(env).tune is expected


def test_a_bad_tune_value_is_refused() -> None:
    with pytest.raises(UsageError, match=r"THREADBOT_TUNE must be on or off, not 'fast'"):
        Settings.from_env({"THREADBOT_TUNE": "fast"})


def test_timer_defaults_come_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "THREADBOT_REMIND_AFTER": "10m",
            "THREADBOT_DEADLINE": "4h",
            "THREADBOT_ON_DEADLINE": "fail",
            "THREADBOT_QUESTION_DEADLINE": "90",
        }
    )
    assert s.approval_timers is not None and s.question_timers is not None
    assert (s.approval_timers.remind_after, s.approval_timers.deadline) == (600.0, 14400.0)
    assert s.approval_timers.on_deadline == "fail"
    assert s.question_timers.deadline == 90.0 and s.question_timers.remind_after is None
    assert Settings.from_env({}).approval_timers is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"THREADBOT_ON_DEADLINE": "approve"}, "THREADBOT_ON_DEADLINE"),
        ({"THREADBOT_QUESTION_ON_DEADLINE": "maybe"}, "THREADBOT_QUESTION_ON_DEADLINE"),
        ({"THREADBOT_DEADLINE": "soon"}, "THREADBOT_DEADLINE"),
        ({"THREADBOT_ESCALATE_AFTER": "1h"}, "escalate_to"),
        ({"THREADBOT_QUESTION_REMIND_AFTER": "-5"}, "THREADBOT_QUESTION_REMIND_AFTER"),
    ],
)
def test_bad_timer_defaults_are_refused_by_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(UsageError, match=named):
        Settings.from_env(env)
