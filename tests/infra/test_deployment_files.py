"""The deployment files (infra/deploy/) checked against the code's own names, so the two cannot drift apart.

- every `CSCORE_*` variable a container gets is one the code knows (a string literal in the packages),
  and every one the DAG reads is set;
- every `AIRFLOW__SECTION__KEY` is an option of the installed Airflow, and `_CMD` only where Airflow allows it;
- each broker's config is a valid `BrokerConfig` with no unknown key, TLS, a metrics token and JSON logs, and
  reads only the secrets of its own service (no platform service mounts a broker secret);
- the Helm chart's values hold every `.Values` path its templates use, and the brokers' URLs the platform gets
  are the brokers' services;
- the image is built from the lock (`uv sync --frozen`) with the uv and Python the project pins;
- a real compose client's `config` accepts the compose file and refuses it without a required setting
  (`make setup` installs Debian's docker-compose where none is installed).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from keybroker.config import BrokerConfig

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "infra" / "deploy"
CHART = DEPLOY / "helm" / "cscore"
PACKAGES = ("attestation", "audit", "cscore", "dags", "enclave", "infra", "keybroker", "sdk", "tasks", "wire")
PARTIES = ("owner", "provider")


def _code_literals(prefix: str, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Every string literal in the packages' code that looks like a variable name starting with `prefix`."""
    found = set()
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and re.fullmatch(rf"{prefix}[A-Z0-9_]+", node.value)
                ):
                    found.add(node.value)
    return found


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _platform_env() -> dict[str, str]:
    """The platform services' environment: compose's and the chart's (Airflow's `env` and `secret` lists)."""
    env = dict(_compose()["services"]["airflow-scheduler"]["environment"])
    airflow = _values()["airflow"]
    env.update({e["name"]: e["value"] for e in airflow["env"]})
    env.update({e["envName"]: f"secret:{e['secretName']}/{e['secretKey']}" for e in airflow["secret"]})
    return env


def test_every_cscore_variable_the_platform_gets_is_one_the_code_reads_and_the_dag_needs_are_set() -> None:
    known = _code_literals("CSCORE_")
    compose_env = set(_compose()["services"]["airflow-scheduler"]["environment"])
    airflow = _values()["airflow"]
    chart_env = {e["name"] for e in airflow["env"]} | {e["envName"] for e in airflow["secret"]}
    for where, names in (("compose.yaml", compose_env), ("values.yaml", chart_env)):
        unknown = sorted(n for n in names if n.startswith("CSCORE_") and n not in known)
        assert unknown == [], f"{where} sets variables no code reads: {unknown}"
        needed = _code_literals("CSCORE_", ("dags",)) - {"CSCORE_WORKER_CONFIG", "CSCORE_LOG_FORMAT"}  # workers'
        needed |= {"CSCORE_OWNER_BROKER_URL", "CSCORE_PROVIDER_BROKER_URL"}  # the platform's attest step names them
        assert sorted(needed - names) == [], f"{where} misses variables the platform reads"


def test_every_airflow_option_exists_and_only_sensitive_ones_come_from_commands() -> None:
    from airflow.configuration import conf, retrieve_configuration_description

    from wire.tenant import APPROVER_VARIABLE

    documented = retrieve_configuration_description(include_providers=True)  # core and providers' options

    for name, value in _platform_env().items():
        if name == "AIRFLOW_VAR_" + APPROVER_VARIABLE.upper():
            assert json.loads(value if not value.startswith("$") else '{"kty": "OKP"}')["kty"] == "OKP"
            continue
        if name in ("AIRFLOW_CONN_AWS_DEFAULT",):
            continue
        if not name.startswith("AIRFLOW__"):
            continue
        section, key = name.removeprefix("AIRFLOW__").lower().split("__", 1)
        if key.endswith("_cmd"):
            key = key.removesuffix("_cmd")
            assert (section, key) in conf.sensitive_config_values, f"{name}: Airflow runs _CMD only for secrets"
        assert key in documented.get(section, {}).get("options", {}), (
            f"{name}: [{section}] {key} is no option of Airflow or its installed providers"
        )
    assert [v for v in _platform_env() if v.startswith("AIRFLOW_VAR_")] == ["AIRFLOW_VAR_CSCORE_TENANT_APPROVER"]


def test_chart_airflow_config_holds_only_airflow_options_and_the_stacks_scheduler_loop() -> None:
    """The chart's `airflow.config` options exist, and the scheduler's idle sleep (each hop of a batch waits
    for one loop) is the local stack's in compose and the chart alike: production pays what was measured."""
    from airflow.configuration import retrieve_configuration_description

    from infra.local.parts import SCHEDULER_IDLE_SLEEP_S

    documented = retrieve_configuration_description(include_providers=True)
    config = _values()["airflow"]["config"]
    for section, options in config.items():
        unknown = sorted(k for k in options if k not in documented.get(section, {}).get("options", {}))
        assert unknown == [], f"values.yaml airflow.config.{section}: no Airflow option {unknown}"
    scheduler_env = _compose()["services"]["airflow-scheduler"]["environment"]
    compose = scheduler_env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"]
    chart = config["scheduler"]["scheduler_idle_sleep_time"]
    assert (compose, chart) == (SCHEDULER_IDLE_SLEEP_S, SCHEDULER_IDLE_SLEEP_S), "compose.yaml, values.yaml"


def _check_broker_config(raw: dict[str, Any], party: str, where: str) -> BrokerConfig:
    config = BrokerConfig.from_dict(raw)
    assert config.extra == {}, f"{where}: keys the broker does not know: {sorted(config.extra)}"
    assert config.name == party and config.tls and config.metrics_token_path is not None, where
    assert config.accept_simulated is False and config.log_format == "json", where
    return config


def test_compose_brokers_are_their_own_services_with_their_own_secrets() -> None:
    compose = _compose()
    services = compose["services"]
    broker_secrets = {}
    for party in PARTIES:
        service = services[f"{party}-broker"]
        mount = next(v.split(":")[0] for v in service["volumes"] if v.endswith(":/etc/cscore/broker.json:ro"))
        raw = json.loads((DEPLOY / mount).read_text())
        config = _check_broker_config(raw, party, mount)
        given = set(service["secrets"])
        paths = [
            config.kek_path,
            config.admin_token_path,
            config.metrics_token_path,
            config.tls_cert_path,
            config.tls_key_path,
        ]
        read = {Path(str(p)).name for p in paths}
        assert {str(Path(str(p)).parent) for p in paths} == {"/run/secrets"}
        assert read == given and all(s.startswith(f"{party}_broker_") for s in given), party
        assert all(s in compose["secrets"] for s in given)
        broker_secrets[party] = given
    assert not broker_secrets["owner"] & broker_secrets["provider"]
    for name, service in services.items():
        if not name.endswith("-broker"):
            assert not set(service.get("secrets", [])) & (broker_secrets["owner"] | broker_secrets["provider"]), name
    # The confidential workers are VMs, never a container of this file.
    assert not [n for n, s in services.items() if "tasks.celery_app" in json.dumps(s.get("command", ""))]


def _tpl_dict(helpers: str, name: str) -> dict[str, str]:
    """The `{{- $name := dict "k" v ... -}}` of the helpers, its values as written ($b.port, $party or a string)."""
    text = re.search(rf"\${name} := dict (.*?) -\}}\}}", helpers)
    assert text is not None, name
    tokens = re.findall(r'"[^"]*"|\$b\.port|\$party', text.group(1))
    return {key.strip('"'): value.strip('"') for key, value in zip(tokens[::2], tokens[1::2], strict=True)}


def test_chart_brokers_render_a_valid_config_and_reach_the_platform_by_their_service() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    fixed = _tpl_dict(helpers, "fixed")
    # The key store: SQLite on the broker's volume, or (postgres.enabled) the URL from the Secret's file.
    assert "(merge $fixed (ternary $postgres $sqlite $b.postgres.enabled) $b.config)" in helpers
    stores = {False: _tpl_dict(helpers, "sqlite"), True: _tpl_dict(helpers, "postgres")}
    assert not {k for k in fixed if k.startswith("db_")}  # the store comes from one of the two, never both
    values = _values()
    env = _platform_env()
    template = (CHART / "templates" / "brokers.yaml").read_text()
    for party in PARTIES:
        b = values["brokers"][party]
        assert b["postgres"]["enabled"] is False  # SQLite on its volume unless the operator says otherwise
        for postgres, store in stores.items():
            where = f"values.yaml brokers.{party} (postgres.enabled: {postgres})"
            rendered = {**fixed, **store}
            raw = {**b["config"], **{k: {"$b.port": b["port"], "$party": party}.get(v, v) for k, v in rendered.items()}}
            config = _check_broker_config(raw, party, where)
            secrets = [
                config.kek_path,
                config.admin_token_path,
                config.metrics_token_path,
                config.tls_cert_path,
                config.tls_key_path,
            ] + ([config.db_url_path] if postgres else [])
            # The Secret's keys the template mounts are the files the config names.
            for path in secrets:
                assert str(path).startswith("/run/secrets/cscore/") and f"  {Path(str(path)).name}: " in template
            # The database URL and its password: only ever in the Secret, never in the ConfigMap's config.
            assert config.db_url is None, where
            assert (config.db_path is None) == postgres and (config.db_url_path is not None) == postgres, where
        assert env[f"CSCORE_{party.upper()}_BROKER_URL"] == f"https://{b['serviceName']}:{b['port']}"
    # The Secret gets db-url only with postgres.enabled; the volume and its mount only without it.
    assert re.search(
        r"\{\{- if \$b\.postgres\.enabled \}\}\n  db-url: "
        r"\{\{ required .*\$b\.secret\.dbUrl \| b64enc \}\}",
        template,
    )
    guarded = re.findall(r"\{\{- if not \$b\.postgres\.enabled \}\}(.*?)\{\{- end \}\}", template, re.S)
    assert any("kind: PersistentVolumeClaim" in g for g in guarded)
    assert any("- name: data\n              mountPath: /var/lib/cscore-broker" in g for g in guarded)
    assert any("claimName: {{ $b.serviceName }}-data" in g for g in guarded)
    assert template.count("/var/lib/cscore-broker") == 1 and template.count("PersistentVolumeClaim") == 1
    # A db_url put in the config values (hence in the ConfigMap) is refused by the chart, naming what to do.
    assert re.search(r'if hasKey \$b\.config "db_url" \}\}\{\{ fail .*postgres\.enabled and the Secret', helpers)


def _paths(tree: Any, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return {prefix}
    out = {prefix} if prefix else set()
    for key, value in tree.items():
        out |= _paths(value, f"{prefix}.{key}" if prefix else key)
    return out


def test_chart_templates_use_only_values_that_exist_and_depend_on_the_official_airflow_chart() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    airflow = [d for d in chart["dependencies"] if d["name"] == "airflow"]
    assert airflow and airflow[0]["repository"] == "https://airflow.apache.org"
    assert re.fullmatch(r"\d+\.\d+\.\d+", airflow[0]["version"])
    values = _values()
    assert values["airflow"]["enabled"] is True  # the dependency's `condition`
    assert airflow[0]["condition"] == "airflow.enabled"
    assert values["airflow"]["executor"] == "CeleryExecutor"
    assert values["airflow"]["images"]["airflow"]["repository"] == "cscore-platform"
    known = _paths(values)
    broker_paths = {p.split(".", 2)[2] for p in known if p.startswith("brokers.owner.") and p.count(".") >= 2}
    for template in (CHART / "templates").iterdir():
        text = template.read_text()
        for path in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text):
            assert path in known, f"{template.name}: .Values.{path} is not in values.yaml"
        for path in re.findall(r"\$b\.([A-Za-z0-9_.]+)", text):
            assert path in broker_paths, f"{template.name}: $b.{path} is in no broker's values"
    # Both brokers offer the same settings (one template renders both).
    assert _paths(values["brokers"]["owner"]) == _paths(values["brokers"]["provider"])


def test_image_is_built_from_the_lock_with_the_pinned_uv_and_python() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY pyproject.toml uv.lock ./" in dockerfile
    syncs = re.findall(r"RUN uv sync ([^\n]+)", dockerfile)
    assert len(syncs) == 2 and all("--frozen" in s and "--no-dev" in s for s in syncs)
    uv_pin = re.search(r"uv==([0-9.]+)", (REPO / "Makefile").read_text())
    assert uv_pin and f"ghcr.io/astral-sh/uv:{uv_pin.group(1)}" in dockerfile
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    python = re.search(r">=(\d+\.\d+)", project["project"]["requires-python"])
    assert python and f"python:{python.group(1)}-" in dockerfile
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.M))
    assert sorted(set(packages) - copied) == [], "packages the image would miss"
    assert 'ENTRYPOINT ["python", "-m", "keybroker", "serve"]' in dockerfile
    assert "FROM runtime AS platform" in dockerfile and "FROM runtime AS broker" in dockerfile


def _compose_client() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _image_uid() -> int:
    """The images' user (the Dockerfile's `useradd --uid`), whom the chart runs as too."""
    uid = re.search(r"^RUN useradd .*--uid (\d+) ", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert uid is not None
    chart = (CHART / "templates" / "brokers.yaml").read_text()
    assert f"runAsUser: {uid.group(1)}" in chart and f"fsGroup: {uid.group(1)}" in chart
    return int(uid.group(1))


def test_make_secrets_creates_every_secret_compose_names_readable_by_the_images_user(tmp_path: Path) -> None:
    """Compose bind-mounts a file secret with its owner and mode as on the host: the brokers and Airflow (the
    images' user) read their 0600 files only if they own them (a broker refused its KEK before: PermissionError)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: make-secrets.sh needs it for the brokers' TLS certificates")
    secrets = tmp_path / "secrets"
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(secrets)], check=True, capture_output=True, timeout=120)
    for name, entry in _compose()["secrets"].items():
        path = secrets / Path(entry["file"]).relative_to("secrets")
        assert path.is_file() and path.stat().st_size > 0, name
        assert path.stat().st_mode & 0o077 == 0, f"{name} is readable by others"
        assert path.stat().st_uid == _image_uid(), f"{name}: not the images' user's, who must read it"
    assert len(bytes.fromhex((secrets / "owner" / "kek.hex").read_text().strip())) == 32
    assert (secrets / "owner" / "kek.hex").read_text() != (secrets / "provider" / "kek.hex").read_text()


def _compose_config(client: list[str], env_file: Path, compose: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*client, "--env-file", str(env_file), "-f", str(compose), "config"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_config_accepts_the_file_and_refuses_a_missing_setting_or_an_unknown_option(tmp_path: Path) -> None:
    client = _compose_client()
    if client is None:
        pytest.fail(
            "no compose client (`docker compose` or `docker-compose`) to validate compose.yaml: run "
            "`make setup` (installs Debian's docker-compose as root)"
        )
    work = tmp_path / "deploy"
    work.mkdir()
    shutil.copy(DEPLOY / "compose.yaml", work / "compose.yaml")
    shutil.copytree(DEPLOY / "brokers", work / "brokers")
    example = DEPLOY / "compose.env.example"
    ok = _compose_config(client, example, work / "compose.yaml")
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    assert {"owner-broker", "provider-broker", "airflow-scheduler", "airflow-triggerer", "postgres", "redis"} <= set(
        resolved["services"]
    )
    assert resolved["services"]["airflow-scheduler"]["environment"]["CSCORE_BUCKET"] == "acme-cscore"
    # Compose v1 does not check that a service's secrets are declared (v2 does): checked here for both.
    declared = set(resolved["secrets"])
    for name, service in resolved["services"].items():
        used = {s["source"] if isinstance(s, dict) else s for s in service.get("secrets", [])}
        assert used <= declared, f"{name} mounts undeclared secrets {sorted(used - declared)}"
    (work / "partial.env").write_text(
        "\n".join(line for line in example.read_text().splitlines() if not line.startswith("CSCORE_BUCKET=")) + "\n"
    )
    missing = _compose_config(client, work / "partial.env", work / "compose.yaml")
    assert missing.returncode != 0 and "bucket of models, batches and results" in missing.stderr
    # The client validates the file against the Compose schema: a misspelt option is refused, named.
    typo = work / "typo.yaml"
    typo.write_text((work / "compose.yaml").read_text().replace("\n  redis:\n", "\n  redis:\n    restrat: always\n", 1))
    refused = _compose_config(client, example, typo)
    assert refused.returncode != 0 and "restrat" in refused.stderr, refused.stderr


def test_daemonless_build_script_passes_the_dockerfiles_arguments_and_builds_its_final_stages() -> None:
    """infra/deploy/build-images.sh (buildah, a debootstrapped base) builds what `docker build` would: the same
    build arguments, both final stages, a base of the release and Python the Dockerfile's default image has."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    script = (DEPLOY / "build-images.sh").read_text()
    args = set(re.findall(r"^ARG (\w+)=", dockerfile, re.M))
    assert set(re.findall(r"--build-arg (\w+)=", script)) == args == {"PYTHON_IMAGE", "UV_IMAGE"}
    finals = set(re.findall(r"^FROM runtime AS (\w+)$", dockerfile, re.M))
    loops = re.findall(r"^for target in ([\w ]+); do$", script, re.M)
    assert len(loops) == 2 and all(set(loop.split()) == finals for loop in loops)  # built, then run
    default = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-slim-(\w+)$", dockerfile, re.M)
    assert default is not None
    python, release = default.groups()
    assert re.search(
        rf"debootstrap --variant=minbase --include=python{re.escape(python)},ca-certificates "
        rf"{release} ",
        script,
    )
    assert "--pull=never" in script and "uv==$uv_version" in script and "--frozen --no-dev" in script
    # The broker is served with make-secrets.sh's files, mounted as compose.yaml's owner-broker mounts them.
    assert 'sh infra/deploy/make-secrets.sh "$work/secrets"' in script
    assert 'compose["services"]["owner-broker"]' in script and "/readyz" in script


def test_dockerignore_keeps_the_operators_secrets_and_settings_out_of_the_images() -> None:
    """The image copies infra/ whole; make-secrets.sh writes the brokers' KEKs and every password under
    infra/deploy/secrets and the README puts compose's .env beside compose.yaml: neither may reach an image
    (before this, `COPY infra ./infra` put a secrets/ made before a rebuild into both images)."""
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    default = re.search(r'^dir=\$\{1:-\$\(dirname "\$0"\)/(\w+)\}$', (DEPLOY / "make-secrets.sh").read_text(), re.M)
    assert default is not None
    assert "COPY infra ./infra" in (DEPLOY / "Dockerfile").read_text()
    for path in (f"infra/deploy/{default.group(1)}", "infra/deploy/.env"):
        parts = path.split("/")
        assert any("/".join(parts[:n]) in ignored for n in range(1, len(parts) + 1)), f"{path} goes in the image"
    assert not {"infra", "*"} & ignored  # infra's Python is needed


def test_broker_image_gives_its_key_store_directory_to_the_images_user() -> None:
    """A new named volume takes the owner of the image's directory at its mount point; one the image lacks is
    root's, and the broker (the images' user) could not create its SQLite key store there (it failed to start)."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    broker_stage = dockerfile.split("FROM runtime AS broker", 1)[1].split("\nFROM ", 1)[0]
    uid = _image_uid()
    for party in PARTIES:
        db_dir = str(Path(json.loads((DEPLOY / "brokers" / f"{party}.json").read_text())["db_path"]).parent)
        assert f"{party}-broker-data:{db_dir}" in _compose()["services"][f"{party}-broker"]["volumes"]
        assert f"RUN mkdir -p {db_dir} && chown {uid}:{uid} {db_dir}\nUSER {uid}\n" in broker_stage
