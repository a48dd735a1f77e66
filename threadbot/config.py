"""Settings, from the environment with flags on top. Nothing is read at import."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from bot.durations import seconds
from bot.errors import UsageError
from bot.events import Timers
from bot.tools import make_timers

if TYPE_CHECKING:
    from bot.people import People

__all__ = ["DEFAULT_TOOLS", "Settings"]

DEFAULT_TOOLS = "bot.examples.ops"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name} must be a whole number, not {raw!r}") from None


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds as a number (`2.5`) or a duration (`90s`, `2m`); more than zero."""
    found = _maybe_seconds(env, name)
    return default if found is None else found


def _maybe_seconds(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value: float | None = seconds(raw)
    except UsageError:
        value = None
    if value is None or value <= 0:
        raise UsageError(
            f"{name} must be a number of seconds (e.g. 2.5) or a duration (90s, 2m), not {raw!r}"
        )
    return value


def _timers(env: Mapping[str, str], kind: str) -> Timers | None:
    """The operator's reminder, escalation and deadline for `kind`: `""`
    (approvals: THREADBOT_REMIND_AFTER, ...) or `"QUESTION_"`. A default
    deadline never approves: only a tool may say so."""
    name = f"THREADBOT_{kind}"
    on_deadline = (env.get(f"{name}ON_DEADLINE") or "").strip().lower() or None
    if on_deadline not in (None, "reject", "fail"):
        raise UsageError(
            f"{name}ON_DEADLINE must be reject or fail, not {on_deadline!r} "
            "(only a tool may approve itself at its deadline)"
        )
    return make_timers(
        f"{name}*",
        remind_after=_maybe_seconds(env, f"{name}REMIND_AFTER"),
        escalate_after=_maybe_seconds(env, f"{name}ESCALATE_AFTER"),
        escalate_to=_list(env, f"{name}ESCALATE_TO"),
        deadline=_maybe_seconds(env, f"{name}DEADLINE"),
        on_deadline=on_deadline,
        approval=False,
    )


def _on_off(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("on", "1", "true", "yes"):
        return True
    if raw in ("off", "0", "false", "no"):
        return False
    raise UsageError(f"{name} must be on or off, not {env.get(name)!r}")


def _list(env: Mapping[str, str], *names: str) -> tuple[str, ...]:
    """Comma-separated values of one or more variables, in order, once each."""
    items = (x.strip() for name in names for x in (env.get(name) or "").split(","))
    return tuple(dict.fromkeys(x for x in items if x))


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """Whether the standard OTEL_* variables ask for traces: an OTLP
    endpoint, or an exporter named (other than `none`), and the SDK not
    turned off (`threadbot.tracing`)."""
    if (env.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
        return False
    exporters = (env.get("OTEL_TRACES_EXPORTER") or "").strip().lower()
    if exporters == "none":
        return False
    return bool(
        exporters
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


@dataclass(frozen=True)
class Settings:
    db: str = "./threadbot.db"
    """THREADBOT_DB: the SQLite file holding every thread."""
    http: str = "127.0.0.1:8000"
    """THREADBOT_HTTP: host:port of the HTTP API."""
    tools: str | None = None
    """THREADBOT_TOOLS: a module path or .py file; the example ops tools if unset."""
    model: str | None = None
    """THREADBOT_MODEL: the model name; `demo` forces the offline demo model."""
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    api_token: str | None = None
    """THREADBOT_API_TOKEN: required as `Authorization: Bearer` when set."""
    system_prompt: str | None = None
    max_turns: int = 25
    model_timeout: float = 120.0
    """THREADBOT_MODEL_TIMEOUT: seconds a model request may take (`2.5`, `90s`, `2m`)."""
    people_file: str | None = None
    """THREADBOT_PEOPLE: a TOML file of people (names, Slack ids, addresses, groups)."""
    approvers: tuple[str, ...] = ()
    """THREADBOT_APPROVERS, with THREADBOT_SLACK_APPROVERS and
    THREADBOT_EMAIL_APPROVERS as aliases: who decides calls whose tool names nobody."""
    email_senders: tuple[str, ...] = ()
    """THREADBOT_EMAIL_SENDERS: addresses and @domains that may start threads by mail."""
    public_url: str | None = None
    """THREADBOT_PUBLIC_URL: where people reach the server (behind a proxy),
    e.g. https://bot.example.com; its host and origin are accepted."""
    allowed_hosts: tuple[str, ...] = ()
    """THREADBOT_ALLOWED_HOSTS: Host names answered; `hosts()` if unset."""
    allowed_origins: tuple[str, ...] = ()
    """THREADBOT_ALLOWED_ORIGINS: other origins whose pages may post."""
    http_max_bytes: int = 1 << 20
    """THREADBOT_HTTP_MAX_BYTES: the largest request body taken."""
    tune: bool = True
    """THREADBOT_TUNE: `on` (the default) or `off`: whether `serve` tunes the
    process for serving (`threadbot.process.tune_for_serving`)."""
    approval_timers: Timers | None = None
    """THREADBOT_REMIND_AFTER, THREADBOT_ESCALATE_AFTER, THREADBOT_ESCALATE_TO,
    THREADBOT_DEADLINE, THREADBOT_ON_DEADLINE (`reject` or `fail`): defaults
    for calls waiting for approval, where their tool sets none."""
    question_timers: Timers | None = None
    """The same with THREADBOT_QUESTION_: for the agent's questions."""
    mcp: str | None = None
    """THREADBOT_MCP: a JSON file of MCP servers (`{"mcpServers": {...}}`)
    whose tools join the agent's (`bot.mcp_tools`)."""
    webhooks: tuple[str, ...] = ()
    """THREADBOT_WEBHOOKS: URLs (comma-separated) told of threads' changes of status."""
    webhook_secret: str | None = None
    """THREADBOT_WEBHOOK_SECRET: `whsec_…`, the key webhooks are signed
    with; generated once and kept in the database if unset."""
    webhook_retry: float = 5.0
    """THREADBOT_WEBHOOK_RETRY: the wait before a failed webhook's second
    attempt; each later one doubles, up to an hour."""
    webhook_give_up: float = 86400.0
    """THREADBOT_WEBHOOK_GIVE_UP: how long after its event a webhook is tried (24h)."""
    webhook_timeout: float = 10.0
    """THREADBOT_WEBHOOK_TIMEOUT: seconds an attempt may take."""
    metrics_token: str | None = None
    """THREADBOT_METRICS_TOKEN: a bearer token that opens /metrics and
    nothing else (for Prometheus); admins' credentials open it as well."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        env = os.environ if env is None else env
        settings = cls(
            db=env.get("THREADBOT_DB") or cls.db,
            http=env.get("THREADBOT_HTTP") or cls.http,
            tools=env.get("THREADBOT_TOOLS") or None,
            model=env.get("THREADBOT_MODEL") or None,
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            api_token=env.get("THREADBOT_API_TOKEN") or None,
            system_prompt=env.get("THREADBOT_SYSTEM_PROMPT") or None,
            max_turns=_int(env, "THREADBOT_MAX_TURNS", cls.max_turns),
            model_timeout=_seconds(env, "THREADBOT_MODEL_TIMEOUT", cls.model_timeout),
            people_file=env.get("THREADBOT_PEOPLE") or None,
            approvers=_list(
                env, "THREADBOT_APPROVERS", "THREADBOT_SLACK_APPROVERS", "THREADBOT_EMAIL_APPROVERS"
            ),
            email_senders=_list(env, "THREADBOT_EMAIL_SENDERS"),
            public_url=env.get("THREADBOT_PUBLIC_URL") or None,
            allowed_hosts=_list(env, "THREADBOT_ALLOWED_HOSTS"),
            allowed_origins=_list(env, "THREADBOT_ALLOWED_ORIGINS"),
            http_max_bytes=_int(env, "THREADBOT_HTTP_MAX_BYTES", cls.http_max_bytes),
            tune=_on_off(env, "THREADBOT_TUNE", cls.tune),
            approval_timers=_timers(env, ""),
            question_timers=_timers(env, "QUESTION_"),
            mcp=env.get("THREADBOT_MCP") or None,
            webhooks=_list(env, "THREADBOT_WEBHOOKS"),
            webhook_secret=env.get("THREADBOT_WEBHOOK_SECRET") or None,
            webhook_retry=_seconds(env, "THREADBOT_WEBHOOK_RETRY", cls.webhook_retry),
            webhook_give_up=_seconds(env, "THREADBOT_WEBHOOK_GIVE_UP", cls.webhook_give_up),
            webhook_timeout=_seconds(env, "THREADBOT_WEBHOOK_TIMEOUT", cls.webhook_timeout),
            metrics_token=env.get("THREADBOT_METRICS_TOKEN") or None,
        )
        return replace(settings, **{k: v for k, v in flags.items() if v is not None})

    @property
    def uses_demo_model(self) -> bool:
        if self.model == "demo":
            return True
        return self.openai_api_key is None and self.openai_base_url is None

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_OPENAI_MODEL

    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.http.rpartition(":")
        if not sep or not port.isdigit():
            raise UsageError(f"THREADBOT_HTTP must be host:port, not {self.http!r}")
        return host.strip("[]") or "127.0.0.1", int(port)

    def hosts(self) -> tuple[str, ...]:
        """The Host names the HTTP server answers to: the allowlist if set,
        else this machine's own names and the public URL's."""
        if self.allowed_hosts:
            return self.allowed_hosts
        host, _ = self.host_port()
        public = self._public_parts()
        return (host, *LOCAL_HOSTS, *([public.netloc] if public else []))

    def origins(self) -> tuple[str, ...]:
        """Origins other than the server's own whose pages may change things."""
        public = self._public_parts()
        own = (f"{public.scheme}://{public.netloc}",) if public else ()
        return (*own, *self.allowed_origins)

    def _public_parts(self) -> SplitResult | None:
        if self.public_url is None:
            return None
        parts = urlsplit(self.public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"THREADBOT_PUBLIC_URL must be an http(s) URL, not {self.public_url!r}"
            )
        return parts

    def local_operator(self, people: People) -> bool:
        """Whether a request with no credentials acts as the local operator:
        on loopback, with no token and nobody in the people file (the first
        run). Anywhere else, everyone signs in or sends a token."""
        return self.api_token is None and not people.persons and self._loopback()

    def _loopback(self) -> bool:
        host, _ = self.host_port()
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def check_exposure(self, people: People) -> None:
        """Refuse to serve beyond this machine with nobody to sign in: no
        token and no people."""
        if self.api_token or people.persons or self._loopback():
            return
        host, _ = self.host_port()
        raise UsageError(
            f"refusing to serve on {host} without THREADBOT_API_TOKEN or THREADBOT_PEOPLE: "
            "anyone who can reach it could answer and approve. Set a token or a people "
            "file, or serve on 127.0.0.1."
        )
