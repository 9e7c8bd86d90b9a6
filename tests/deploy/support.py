"""Readers for the deployment files, shared by the tests in this folder: a Dockerfile parser (stages, ENV,
exec-form CMD), .dockerignore matching as Docker does it, metric names in PromQL, metric families of a
Prometheus exposition, the external tools (installed into the virtualenv by `pip install -e .[test]`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "made-service.json"
NGINX_CONF = DOCKER / "nginx" / "default.conf"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
VENV_BIN = Path(sys.executable).parent


def default(setting: str):
    """A setting's default, as the service defines it (not as this machine's MADE_* variables set it)."""
    return Settings.model_fields[setting].default


def drain_bound_s(shutdown_grace_s: float) -> float:
    """The longest a SIGTERM'd server can take to exit (docs/api.md, graceful shutdown): the drain, then
    uvicorn's wait for open connections, max(1, int(grace))."""
    return shutdown_grace_s + max(1, int(shutdown_grace_s))


def setting_of_env(name: str) -> str | None:
    """MADE_MAX_BODY_BYTES -> max_body_bytes if that is a setting, else None."""
    if not name.startswith("MADE_"):
        return None
    setting = name[len("MADE_") :].lower()
    return setting if setting in Settings.model_fields else None


def tool(name: str) -> str:
    """An executable from the virtualenv (the test extra installs them), else from PATH."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the test extra, `pip install -e '.[test]'`")
    return found


def run(*argv: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def load_yaml_documents(path: Path) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def duration_s(text: str) -> float:
    """'60s', '1m30s', '35s', '1h' (compose, nginx and Prometheus style) -> seconds; a bare number: "
    "seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(a) * units[b] for a, b in parts)


# ---- Dockerfile ------------------------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN, None for shell form."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = re.sub(r"^(--\S+\s+)*", "", text)
            if not text.startswith("CMD"):
                return None
            text = text[len("CMD") :].strip()
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def flags(self) -> dict[str, str]:
        return dict(re.findall(r"--([a-z-]+)=(\S+)", self.arguments))


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def resolve(self, text: str, args: dict[str, str] | None = None) -> str:
        values = self.global_args | (args or {})
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)

    def chain(self, stage: Stage, args: dict[str, str] | None = None) -> list[Stage]:
        """The stage and the stages it is built FROM, nearest first (external images end the chain)."""
        chain = [stage]
        while (parent := self.stage(self.resolve(chain[-1].base, args))) is not None:
            chain.append(parent)
        return chain

    def env(self, stage: Stage, args: dict[str, str] | None = None) -> dict[str, str]:
        """ENV in effect in a stage, inherited from the stages it is built on (not from external images)."""
        env: dict[str, str] = {}
        for s in reversed(self.chain(stage, args)):
            for instruction in s.all("ENV"):
                env |= parse_env(instruction.arguments)
        return env

    def command(self, stage: Stage, args: dict[str, str] | None = None) -> list[str]:
        """ENTRYPOINT + CMD of a stage (exec form required), inherited like Docker does."""
        entrypoint = cmd = None
        for s in reversed(self.chain(stage, args)):
            if (i := s.last("ENTRYPOINT")) is not None:
                entrypoint, cmd = i, None  # a new ENTRYPOINT resets an inherited CMD
            if (i := s.last("CMD")) is not None:
                cmd = i
        argv: list[str] = []
        for instruction in (entrypoint, cmd):
            if instruction is not None:
                form = instruction.exec_form()
                if form is None:
                    raise ValueError(f"line {instruction.line}: {instruction.keyword} is not in exec form")
                argv += form
        return argv


def parse_env(arguments: str) -> dict[str, str]:
    words = shlex.split(arguments)
    if words and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped, as BuildKit does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((start, pending + stripped))
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical:
        keyword, _, arguments = text.partition(" ")
        keyword, arguments = keyword.upper(), arguments.strip()
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if keyword == "ARG":
                key, _, value = arguments.partition("=")
                global_args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments, line))
    return Dockerfile(global_args, stages)


# ---- .dockerignore -----------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        c = pattern[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.index("]", i + 1)
            body = pattern[i + 1 : j]
            out += "[" + ("^" + body[1:] if body[:1] in ("!", "^") else body) + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


def dockerignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def excluded_from_context(relative: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether Docker leaves this path (relative to the context) out: the last pattern matching the path or
    one of its parent directories decides, `!` patterns re-include (moby's patternmatcher)."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


# ---- PromQL and the exposition format ----------------------------------------------------------------------
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
}
GRAFANA_TIME_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def promql_metric_names(expr: str) -> set[str]:
    """Every metric (series) name a PromQL expression selects, e.g. made_batch_rows_sum, with Grafana's
    variables allowed. Functions, aggregations, keywords, label names (in {...} and by/without/on/ignoring
    lists), strings, numbers and durations are not metric names. Grafana's label_values(selector, label) is
    read as its selector."""
    expr = re.sub(r"label_values\(\s*(.*?)\s*,\s*[A-Za-z_]\w*\s*\)\s*$", r"\1", expr.strip(), flags=re.DOTALL)
    expr = re.sub(r"^label_values\(\s*[A-Za-z_]\w*\s*\)$", "", expr)
    for variable, value in GRAFANA_TIME_VARIABLES.items():
        expr = expr.replace(variable, value)
    expr = _strip_strings(expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+-?\S+", " ", expr)
    names = set()
    tokens = list(
        re.finditer(r"(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?[a-zA-Z]*)|(?P<id>[A-Za-z_:][\w:]*)|\S", expr)
    )
    for k, token in enumerate(tokens):
        name = token.group("id")
        if name is None or name.lower() in PROMQL_KEYWORDS:
            continue
        following = tokens[k + 1].group(0) if k + 1 < len(tokens) else ""
        if following == "(":
            continue  # a function or an aggregation
        names.add(name)
    return names


def grafana_to_promql(expr: str) -> str:
    """A dashboard query as plain PromQL: time variables become durations, $variables inside label
    matchers a match-everything regex."""
    for variable, value in GRAFANA_TIME_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exposition_families(text: str) -> dict[str, str]:
    """{family: type} from the # TYPE lines of a Prometheus text exposition. A family is listed even when
    it has no samples yet (a labelled metric no request has touched)."""
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            families[name] = kind.strip()
    return families


def family_of(series: str, families: dict[str, str]) -> tuple[str, str] | None:
    """(family, type) that a series name belongs to: histogram series carry _bucket/_sum/_count, counters
    _total; a name matching no exported family is None. Suffixes are only stripped where the remainder is a
    family of the type that has them, so a gauge named e.g. x_count would still be x_count."""
    if series in families and families[series] != "histogram":
        return series, families[series]
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and families.get(base) in ("histogram", "summary"):
            if suffix == "_bucket" and families[base] == "summary":
                return None
            return base, families[base]
    if series.endswith("_total") and families.get(series.removesuffix("_total")) == "counter":
        return series.removesuffix("_total"), "counter"
    return None


# ---- Grafana dashboard -------------------------------------------------------------------------------------
def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expression) for every PromQL expression of the dashboard: panel targets (rows included) and
    query variables."""
    found = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                found.append((f"panel {p.get('id')} {p.get('title')!r} target {t.get('refId')}", t["expr"]))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            query = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query")
            found.append((f"variable {v['name']}", query))
    return found


def nginx_directives(text: str) -> list[tuple[str, list[str]]]:
    """(directive, arguments) of every simple directive in an nginx config, comments and quotes handled."""
    tokens = re.findall(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|#[^\n]*|[{};]|[^\s{};]+", text)
    directives, current = [], []
    for token in tokens:
        if token.startswith("#"):
            continue
        if token in ("{", "}", ";"):
            if current and token == ";":
                directives.append((current[0], current[1:]))
            current = []
            continue
        current.append(token)
    return directives


def nginx_size_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", text).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]
