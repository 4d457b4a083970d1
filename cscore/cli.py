"""`cscore`: one command line, a subcommand per party (provider, owner, audit) plus the local stack."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cscore.present import histogram, histogram_lines, histogram_lines_of, label_rule_seen, tee_line

_T = TypeVar("_T")
# httpx imports its own command line client (click, pygments, rich: ~0.1 CPU s) whenever those are installed;
# cscore never runs it, and an ImportError there makes httpx keep a stub instead.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def default_state_dir() -> Path:
    """$CSCORE_STATE_DIR, else .state/demo; read when a command runs (not at import), so tests can isolate."""
    return Path(os.environ.get("CSCORE_STATE_DIR") or ".state/demo")


def _load_stack_env(state_dir: Path) -> None:
    """Point this process at a running local stack (its stack.env), unless variables are already set."""
    from infra.local.envfile import load_env

    env_file = state_dir / "stack.env"
    if env_file.exists():
        for name, value in load_env(env_file).items():
            os.environ.setdefault(name, value)


def cmd_demo(args: argparse.Namespace) -> int:
    from cscore.demo import results_next_step, run_demo

    say: Callable[[str], None] = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if args.example == "images":
        return _images_demo(args, say)
    report = run_demo(args.state_dir, workers=args.workers, keep=args.keep, say=say)
    if args.plot:
        _plot(report.probabilities, args.plot, f"Batch {report.batch_id}: spam probability")
    if args.json:
        print(json.dumps(report.as_dict()))
        return 1 if report.audit_findings else 0
    c = report.confusion
    print(f"\nTEE             {report.tee}\n"
          f"emails scored   {report.emails_scored}\nspam found      {report.spam_found}\n"
          f"label rule      {report.label_rule}\n"
          f"precision       {report.precision:.4f}  ({c['tp']} spam caught, {c['fp']} ham flagged as spam)\n"
          f"recall          {report.recall:.4f}  ({c['tp']} of {c['tp'] + c['fn']} spam caught, {c['fn']} missed; "
          f"{c['tn']} ham passed)\n"
          f"wall time       {report.wall_s:.1f} s\nthroughput      {report.emails_per_s:.1f} emails/s\n"
          f"measurement     {report.measurement}\n"
          f"results         {report.results_at}\n"
          f"                {results_next_step(report.batch_id, report.state_dir, keep=args.keep)}\n"
          f"audit log       {report.audit_entries} entries, "
          f"{'verified' if not report.audit_findings else 'PROBLEMS: ' + '; '.join(report.audit_findings)}")
    print("\nspam probability (emails per bin)\n" + "\n".join(histogram_lines(report.probabilities)))
    if args.keep:
        print(f"\nS3 endpoint     {report.s3_endpoint}\nAirflow         {report.airflow_url}\n"
              f"state directory {report.state_dir}  (stack still up: `cscore stack stop --state-dir "
              f"{report.state_dir}` when done)")
    else:  # no URLs: they went with the stack (they were said while it was up)
        print(f"\nstate directory {report.state_dir}  (stack stopped: its Airflow UI and S3 endpoint no longer "
              "answer; --keep leaves it up)")
    return 1 if report.audit_findings else 0  # an audit that does not hold (docs/CLI.md, exit status)


def _images_demo(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    from cscore.demo import results_next_step
    from cscore.demo_images import run_images_demo

    report = run_images_demo(args.state_dir, workers=args.workers, keep=args.keep, say=say)
    fetch = results_next_step(report.batch_id, report.state_dir, keep=args.keep, demo="cscore demo --example images",
                              out="results.parquet")  # CSV refuses the probabilities' list column
    if args.json:
        print(json.dumps(report.as_dict()))
        return 1 if report.audit_findings else 0
    print(f"\nTEE             {report.tee}\nimages scored   {report.files_scored}\n"
          f"accuracy        {report.accuracy:.4f}  (classes against the digits' true labels)\n"
          f"bit-exact       {'yes' if report.bit_exact else 'NO'}  (every probability vs plaintext scoring of the "
          f"same files)\n"
          f"wall time       {report.wall_s:.1f} s\nthroughput      {report.images_per_s:.1f} images/s\n"
          f"measurement     {report.measurement}\nresults         {report.results_at}\n"
          f"                {fetch}\n"
          f"audit log       {report.audit_entries} entries, "
          f"{'verified' if not report.audit_findings else 'PROBLEMS: ' + '; '.join(report.audit_findings)}")
    print("\nfiles per class " + "  ".join(f"{k}:{v}" for k, v in report.classes.items()))
    print("\n".join(f"  {s['file']:16} class {s['class']}  p={s['probability']}  (true {s['true']})"
                    for s in report.sample))
    print(f"\nstate directory {report.state_dir}" + ("" if args.keep else "  (stack stopped; --keep leaves it up)"))
    return 0 if report.bit_exact and not report.audit_findings else 1  # either: the run's outcome is negative


def _plot(probabilities: list[float], path: Path, title: str) -> None:
    from cscore.present import plot_histogram

    plot_histogram(probabilities, path, title=title)
    print(f"histogram written to {path}", file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> int:
    from cscore.bench import run_bench

    say: Callable[[str], None] = (lambda line: print(line, file=sys.stderr)) if args.json else print
    report = run_bench(args.state_dir, rounds=args.rounds, scale=args.scale, workers=args.workers,
                       warmup=args.warmup, emails=args.emails, say=say)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    print("\n" + report.table())
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from infra.local.stack import LocalStack

    stack = LocalStack(args.state_dir, workers=args.workers, airflow=not args.no_airflow)
    if args.action == "start":
        stack.start()
        # Absolute, and exported by `set -a`: stack.env has no `export`, and other shells may be elsewhere.
        state_dir = args.state_dir.resolve()
        env_file = state_dir / "stack.env"
        where = _stack_endpoints(stack.env, stack.worker_metrics)
        print(json.dumps({"state_dir": str(state_dir), "env_file": str(env_file), **where}) if args.json else
              f"stack up; pass --state-dir {shlex.quote(str(state_dir))} to other commands, or in each shell "
              f"`set -a; . {shlex.quote(str(env_file))}; set +a` (which other tools read too)\n"
              + _endpoint_lines(where, stop=f"cscore --state-dir {shlex.quote(str(state_dir))} stack stop"))
    else:
        from infra.local import procs

        stopped = procs.clean_stale(args.state_dir.resolve())  # by the pid files of the run that started it
        print(json.dumps({"stopped": stopped}) if args.json else
              f"stopped {', '.join(stopped) or 'nothing (no pid files)'}")
    return 0


def _stack_endpoints(env: dict[str, str], worker_metrics: dict[str, str]) -> dict[str, Any]:
    """Where an operator looks at a started stack: Airflow's UI, each worker's and each broker's metrics (URLs
    only: stack.env also holds secrets, none of which is shown)."""
    brokers = {name.removeprefix("CSCORE_").removesuffix("_BROKER_URL").lower(): url for name, url in env.items()
               if name.startswith("CSCORE_") and name.endswith("_BROKER_URL")
               and name != "CSCORE_CELERY_BROKER_URL"}  # the workers' task queue, not a key broker
    return {"airflow_url": env.get("CSCORE_AIRFLOW_URL"), "worker_metrics": dict(worker_metrics),
            "broker_metrics": {name: f"{url.rstrip('/')}/metrics" for name, url in brokers.items()},
            "broker_ca": env.get("CSCORE_BROKER_CA")}


def _endpoint_lines(where: dict[str, Any], *, stop: str) -> str:
    lines = [("Airflow UI", where["airflow_url"] or "(none: --no-airflow)")]
    lines += [(f"{part} metrics", url) for part, url in where["worker_metrics"].items()]
    tls = f" (curl --cacert {shlex.quote(where['broker_ca'])})" if where["broker_ca"] else ""
    lines += [(f"{name} broker metrics", url + tls) for name, url in where["broker_metrics"].items()]
    lines.append(("stop", stop))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"  {label:<{width}}  {text}" for label, text in lines)


def cmd_models(args: argparse.Namespace) -> int:
    from sdk.models import list_models
    from sdk.storage import ObjectStore

    _load_stack_env(args.state_dir)
    from sdk.party import Party

    owner = Party.from_env("owner")
    models = list_models(ObjectStore(), owner.trusted_providers(), task=args.task)
    if args.tenant:  # this owner's tuned models, verified: listed for its own tenant only
        from sdk.owner_training import tuned_models

        skipped: list[str] = []
        models += [m for m in tuned_models(ObjectStore(), args.tenant, owner=owner,
                                           accept_simulated=args.accept_simulated, skipped=skipped)
                   if args.task is None or m.task == args.task]
        for line in skipped:  # a tuned model the owner trained must not just vanish from the list
            print(f"cscore: not listed: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps([m.summary() for m in models]))
        return 0
    if not models:
        print(f"no published models{f' for task {args.task}' if args.task else ''}")
    for m in models:
        print(_listing_lines(m.summary()))
    return 0


def _listing_lines(s: dict[str, Any]) -> str:
    """One card for a person: what it does, whom it is signed by, what it claims and costs."""
    trust = ("signed by a provider you trust" if s["trusted"] else
             f"UNTRUSTED signer {s['signer']} (pin the provider's key: cscore owner trust-provider KEY.jwk)")
    price = s["price"]
    quota = s["quota"]
    metrics = s["metrics"]
    terms = [f"{price['per_1000_rows']} {price['currency']} per 1000 rows" if isinstance(price, dict) else "no price",
             f"quota {quota['rows']} rows per {quota['period_s']} s" if isinstance(quota, dict) else "no quota",
             "full probabilities" if s["probability_digits"] is None else
             "labels only" if s["probability_digits"] == 0 else f"probabilities to {s['probability_digits']} digits"]
    lines = [f"{s['model']}  [{s['task']}]  {trust}",
             f"    inputs {', '.join(map(str, s['inputs'])) or '?'}  ->  results {', '.join(map(str, s['outputs']))}",
             "    claims " + (", ".join(f"{k} {v}" for k, v in metrics.items()) if isinstance(metrics, dict) and metrics
                              else "no metrics"),
             f"    terms  {'; '.join(terms)}", f"    digest {s['digest']}"]
    if s["problem"]:
        lines.append(f"    UNUSABLE card: {s['problem']}")
    return "\n".join(lines)


def cmd_provider_key(args: argparse.Namespace) -> int:
    from sdk.party import Party

    _load_stack_env(args.state_dir)
    print(json.dumps(Party.from_env(args.provider).public_key()))  # JSON with or without --json
    return 0


def cmd_owner_trust_provider(args: argparse.Namespace) -> int:
    from sdk.party import Party

    hint = "`cscore provider key > provider.jwk` on the provider's machine writes it"
    key = _json_file(args.key, "the provider's public key (a JWK object)", hint)
    _check_public_okp(args.key, key, hint)
    _load_stack_env(args.state_dir)
    path = Party.from_env("owner").trust_provider(key)
    print(json.dumps({"trusted": str(path)}) if args.json else
          f"model cards signed by this key are now trusted ({path})")
    return 0


def _check_public_okp(path: Path, jwk: dict[str, Any], hint: str) -> None:
    """`jwk` is an Ed25519 public key (OKP JWK); raises ValueError naming `path` and what it holds instead."""
    from joserfc.errors import JoseError
    from joserfc.jwk import OKPKey

    if "d" in jwk:
        raise ValueError(f"{path}: expected a public key, got a private one (it has 'd'); keep it secret and give "
                         f"the public half: {hint}")
    try:
        OKPKey.import_key(jwk)
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: expected an Ed25519 public key (JWK kty OKP, crv Ed25519), got kty "
                         f"{jwk.get('kty')!r} ({exc}); {hint}") from None


def _json_file(path: Path, what: str, hint: str) -> dict[str, Any]:
    """The JSON object in `path`; raises ValueError naming the file, what it should hold, what it holds, and `hint`
    (where the right file comes from)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: expected {what} as JSON, got bytes that are not UTF-8 text; {hint}") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        first = text.strip().splitlines()[0][:40] if text.strip() else "an empty file"
        raise ValueError(f"{path}: expected {what} as JSON, got {first!r} ({exc}); {hint}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected {what} as a JSON object, got a JSON {type(value).__name__}; {hint}")
    return value


def cmd_provider_publish(args: argparse.Namespace) -> int:
    from cscore.release import measurements_to_allow
    from sdk.party import Party
    from sdk.provider import ModelError, Offer, publish_model
    from sdk.storage import ObjectStore

    _load_stack_env(args.state_dir)
    measurements = measurements_to_allow(args.measurement, args.release, args.release_key)
    quota = {"rows": args.quota_rows, "period_s": args.quota_period_s} if args.quota_rows else None
    contract = _json_file(args.contract, "the model's contract", "see wire/contract.py for its fields") \
        if args.contract else None
    offer = Offer(task=args.task, contract=contract,
                  metrics=dict(_metric(m) for m in args.metric or ()),
                  price={"currency": args.currency, "per_1000_rows": args.price_per_1000} if args.price_per_1000
                  is not None else None, description=args.description or "")
    try:
        published = publish_model(args.model.read_bytes(), args.name, provider=Party.from_env(args.provider),
                                  store=ObjectStore(), allowed_measurements=measurements,
                                  probability_digits=args.probability_digits, quota=quota, offer=offer)
    except ModelError as exc:  # the sdk sees bytes only: name the file the user gave
        if not str(exc).startswith("model: "):
            raise
        raise ModelError(f"{args.model}: {str(exc).removeprefix('model: ')}") from None
    print(json.dumps({"name": published.name, "version": published.version, "digest": published.digest})
          if args.json else f"published {published.name}:{published.version} {published.digest}")
    return 0


def cmd_provider_publish_recipe(args: argparse.Namespace) -> int:
    from wire.recipe import Recipe

    document = _json_file(args.recipe, "a training recipe (cscore.recipe/v1)", "see wire/recipe.py for its fields")
    try:
        recipe = Recipe.parse(document)  # strict: before any key or upload
    except ValueError as exc:
        raise ValueError(f"{args.recipe}: {exc}") from exc
    from cscore.release import measurements_to_allow
    from sdk.party import Party
    from sdk.provider import publish_recipe
    from sdk.storage import ObjectStore

    _load_stack_env(args.state_dir)
    measurements = measurements_to_allow(args.measurement, args.release, args.release_key)
    published = publish_recipe(recipe, args.name, provider=Party.from_env(args.provider), store=ObjectStore(),
                               allowed_measurements=measurements)
    print(json.dumps({"name": published.name, "version": published.version, "digest": published.digest})
          if args.json else f"published recipe {published.name}:{published.version} {published.digest}")
    return 0


def _add_provider_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as", dest="provider", default="provider", metavar="PROVIDER",
                        help="which provider you are, when one machine holds several (its home <state>/PROVIDER and "
                             "CSCORE_<PROVIDER>_BROKER_URL; the embedded stack has 'provider' and 'vision')")


def _metric(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not name or number != number:
        raise ValueError(f"--metric: expected NAME=NUMBER (e.g. accuracy=0.97), got {text!r}")
    return name, number


def cmd_provider_register_owner(args: argparse.Namespace) -> int:
    from sdk.party import Party

    key = _json_file(args.key, "the owner broker's public grant key (a JWK object)",
                     "`cscore owner grant-key > owner-grant.jwk` on the owner's machine writes it")
    _load_stack_env(args.state_dir)
    Party.from_env(args.provider).broker().register_owner(args.name, key)
    print(json.dumps({"owner_broker": args.name, "registered": True}) if args.json else
          f"your broker now releases model keys for batches granted by owner broker '{args.name}'")
    return 0


def cmd_provider_usage(args: argparse.Namespace) -> int:
    from sdk.party import Party
    from sdk.provider import model_key_id, released_batches, usage_records
    from sdk.results import owner_trust
    from sdk.storage import ObjectStore

    _load_stack_env(args.state_dir)
    broker = Party.from_env(args.provider).broker()
    # The measurements this provider's broker releases the model key to, unless named: records from an earlier
    # release's enclaves need that release's measurement.
    measurements = args.measurement or broker.get_key(model_key_id(args.model))["measurements"]
    anchors, policy = owner_trust(accept_simulated=args.accept_simulated, measurements=measurements)
    usage = usage_records(ObjectStore(), args.model, anchors=anchors, policy=policy)
    # The platform can delete records, not the broker's log of releases: a released batch without any is named.
    missing = sorted(released_batches(broker.decisions(), args.model) - usage.batches)
    if args.json:
        print(json.dumps({"records": usage.records, "per_owner": usage.per_tenant,
                          "released_without_records": missing}))
        return 0
    print("\n".join([f"{owner:20} {batches:6} batches {rows:10} rows"
                     for owner, (batches, rows) in sorted(usage.per_tenant.items())]
                    + [f"({usage.records} records, each verified against its enclave's evidence)"]))
    if missing:
        print(f"{len(missing)} batches your broker released the model key for have no usage record (deleted, or "
              f"still being scored): {', '.join(missing)}")
    return 0


def cmd_owner_grant_key(args: argparse.Namespace) -> int:
    from sdk.party import Party

    _load_stack_env(args.state_dir)
    print(json.dumps(Party.from_env("owner").broker().grant_key()))
    return 0


def cmd_owner_register(args: argparse.Namespace) -> int:
    from sdk.owner import register_tenant
    from sdk.party import Party
    from sdk.storage import ObjectStore

    _load_stack_env(args.state_dir)
    store = ObjectStore()
    request = register_tenant(Party.from_env("owner"), args.tenant, store)
    if args.json:
        print(json.dumps({"tenant": request.tenant, "thumbprint": request.thumbprint}))
    else:
        print(f"tenant {request.tenant}: registration requested (s3://{store.bucket}/registrations/{request.tenant}/"
              f"request.jws). Give the platform operator this key thumbprint, out of band:\n  {request.thumbprint}\n"
              "Your manifests are accepted once the operator approves it.")
    return 0


def cmd_platform_approve_tenant(args: argparse.Namespace) -> int:
    from sdk.platform import approve_tenant, approver_key
    from sdk.storage import ObjectStore

    _load_stack_env(args.state_dir)
    home = args.key_home or Path(os.environ.get("CSCORE_STATE_DIR", str(args.state_dir))) / "platform"
    key = approve_tenant(ObjectStore(), args.tenant, args.thumbprint, approver_key(home), replace=args.replace)
    print(json.dumps({"tenant": args.tenant, "thumbprint": args.thumbprint, "approval": key}) if args.json else
          f"tenant {args.tenant} approved with key {args.thumbprint} ({key}); the DAG accepts its manifests now")
    return 0


def _submit_needs(emails: Path | None, model: str | None) -> str:
    """What `owner submit` lacks when EMAILS or --model is missing (without --resubmit), and how to give it."""
    if emails is None and model is None:
        return "owner submit: expected EMAILS and --model (or --resubmit BATCH), got neither"
    if model is None:
        return (f"owner submit {emails}: expected --model NAME or NAME:VERSION, got none; `cscore models` lists the "
                "published models")
    return (f"owner submit --model {model}: expected EMAILS (what to score: an .eml folder, mbox, JSON lines or "
            "Parquet; with --images or --numbers, that input), got none; give its path")


def cmd_owner_submit(args: argparse.Namespace) -> int:
    from cscore.progress import progress
    from cscore.release import measurements_to_allow
    from sdk.emails import Email, EmailInputError, default_processes, read_emails
    from sdk.models import find_model
    from sdk.owner import BatchError, resubmit_batch, spool_emails, submit_spooled
    from sdk.party import Party
    from sdk.storage import ObjectStore

    if args.images and args.numbers:
        raise BatchError("owner submit: expected --images or --numbers, got both")
    if args.dry_run:
        return _dry_run_images(args) if args.images else _dry_run_numbers(args) if args.numbers else _dry_run(args)
    if not args.resubmit and (args.emails is None or args.model is None):
        raise BatchError(_submit_needs(args.emails, args.model))
    _load_stack_env(args.state_dir)
    store = ObjectStore()
    if args.resubmit:
        key = resubmit_batch(args.tenant, args.resubmit, store)
        print(json.dumps({"batch_id": args.resubmit, "manifest_key": key}) if args.json else
              f"resubmitted {key}\nnext: cscore owner results {args.resubmit} --tenant {args.tenant} --out FILE  "
              "(waits for the platform's new run of the batch, verifies every receipt, decrypts)")
        return 0
    if args.images or args.numbers:
        return _submit_contract_input(args, store, measurements_to_allow(args.measurement, args.release,
                                                                          args.release_key))
    flagged: list[int] = [0]

    def warn(email: Email) -> None:
        flagged[0] += 1
        if flagged[0] <= 5:
            print(f"warning: {email.source} {email.message_id}: {'; '.join(email.flags)}", file=sys.stderr)

    # Read and check every email first (spooled encrypted, bounded memory): any refusal comes before a key or
    # an upload.
    if args.jobs is not None and args.jobs < 1:
        raise BatchError(f"--jobs: expected at least 1, got {args.jobs}")
    try:
        with progress("reading and checking emails", unit="emails") as reading:
            spool = spool_emails(_ticking(read_emails(args.emails, processes=args.jobs or default_processes()),
                                          reading.advance), flagged=warn)
    except (EmailInputError, BatchError) as exc:
        if not args.emails.is_dir():
            raise
        # Reading stops at the first refusal: say how to see every bad file of the folder in one go.
        folder = shlex.quote(str(args.emails))
        raise type(exc)(f"{str(exc).rstrip('.')}. Nothing was uploaded; to check every file in {folder} before "
                        f"anything is uploaded (each refused file listed): cscore owner submit {folder} --dry-run "
                        f"--tenant {shlex.quote(args.tenant)}") from None
    with spool:
        if spool.rows == 0:
            raise BatchError(f"{args.emails}: expected at least one email, got an empty batch")
        if flagged[0]:
            print(f"warning: {flagged[0]} email(s) flagged, scored as read (`--dry-run` lists them all)",
                  file=sys.stderr)
        owner = Party.from_env("owner")
        if "/" in args.model:  # <tenant>/<name>: a tuned model, its card signed by the enclave that trained it
            from sdk.owner_training import find_tuned_model

            model = find_tuned_model(store, args.model, owner=owner, accept_simulated=args.accept_simulated)
        else:
            model = find_model(store, args.model, owner.trusted_providers())
        if model.card is not None and any(i.kind != "email-text" for i in model.card.contract.inputs):
            raise BatchError(f"model {model.name}:{model.version} takes "
                             f"{[i.kind for i in model.card.contract.inputs]}, not emails; for a folder of images "
                             "add --images, for a CSV or Parquet table of numbers add --numbers")
        measurements = measurements_to_allow(args.measurement, args.release, args.release_key)
        with progress("encrypting and uploading", total=spool.rows, unit="emails") as uploading:
            batch = submit_spooled(spool, model, tenant=args.tenant, owner=owner, store=store,
                                   measurements=measurements, progress=uploading.advance)
    _print_submitted(args, batch, "emails")
    return 0


def _ticking(items: Iterable[_T], tick: Callable[[], None]) -> Iterator[_T]:
    """`items`, `tick()` called as each is taken."""
    for item in items:
        tick()
        yield item


def _print_submitted(args: argparse.Namespace, batch: Any, what: str) -> None:
    if args.json:
        print(json.dumps({"batch_id": batch.batch_id, "tenant": batch.tenant, "rows": batch.rows,
                          "manifest_key": batch.manifest_key}))
    else:
        print(f"submitted batch {batch.batch_id}: {batch.rows} {what} ({batch.manifest_key})\n"
              f"next: cscore owner results {batch.batch_id} --tenant {batch.tenant} --out FILE  (waits for the batch, "
              "verifies every receipt, decrypts)")


def cmd_owner_train(args: argparse.Namespace) -> int:
    from cscore.release import measurements_to_allow
    from sdk.owner_training import read_labelled, submit_training
    from sdk.party import Party
    from sdk.platform import config_for_owner, published_worker_config
    from sdk.storage import ObjectStore
    from wire.recipe import verify_recipe_card

    labelled = read_labelled(args.emails)  # every input refusal before any server is contacted
    name, _, version = args.recipe.partition(":")
    if not version.isdigit():
        raise ValueError(f"--recipe: expected NAME:VERSION (e.g. spam-recipe:1), got {args.recipe!r}")
    _load_stack_env(args.state_dir)
    store, owner = ObjectStore(), Party.from_env("owner")
    card_key = f"recipes/{name}/{version}/card.jws"
    card = verify_recipe_card(store.get(card_key).decode(), owner.trusted_providers(), what=card_key)
    job = submit_training(labelled, card, tenant=args.tenant, owner=owner, store=store,
                          measurements=measurements_to_allow(args.measurement, args.release, args.release_key),
                          config_digests=[config_for_owner(published_worker_config(store), owner.broker_name,
                                                           owner.broker_url)],
                          model_name=args.model_name, holdout_fraction=args.holdout, seed=args.seed)
    print(f"submitted training job {job.job_id}: {job.rows} emails, {job.holdout_rows} held out "
          f"({job.manifest_key})")
    if args.wait <= 0:
        return 0
    return _await_training(args, store, owner, job.job_id)


def _await_training(args: argparse.Namespace, store: Any, owner: Any, job_id: str) -> int:
    """Wait for the job, verify the enclave's receipt and tuned card, print the held-out metrics."""
    from sdk.owner_training import verify_training, wait_for_training

    status = wait_for_training(store, args.tenant, job_id, timeout=args.wait,
                               progress=lambda state: print(f"training job {job_id}: {state}", file=sys.stderr))
    if status["state"] != "succeeded":
        print(f"training job {job_id} failed: {status.get('reason')}", file=sys.stderr)
        return 1
    outcome = verify_training(store, args.tenant, job_id, owner=owner, accept_simulated=args.accept_simulated)
    summary = {"job_id": job_id, "model": outcome.model, "digest": outcome.digest,
               "measurement": outcome.measurement, **{k: outcome.metrics[k] for k in sorted(outcome.metrics)}}
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join(f"{k.replace('_', ' '):14} {v}" for k, v in summary.items()))
        print(f"use it: cscore owner submit EMAILS --tenant {args.tenant} --model {outcome.model}")
    return 0


def _submit_contract_input(args: argparse.Namespace, store: Any, measurements: list[str]) -> int:
    """A folder of PNG/JPEG files (--images) or a CSV/Parquet table (--numbers) for a model whose card takes
    them: every file, row and field checked against the card before any upload."""
    from sdk.images import read_images
    from sdk.numbers import read_numbers
    from sdk.owner import submit_table
    from sdk.party import Party

    owner = Party.from_env("owner")
    model, contract = _carded_model(store, args.model, owner)
    read, what = (read_images, "images") if args.images else (read_numbers, "rows")
    table = read(args.emails, contract, f"{model.name}:{model.version}")
    batch = submit_table(table, model, tenant=args.tenant, owner=owner, store=store, measurements=measurements)
    _print_submitted(args, batch, what)
    return 0


def _carded_model(store: Any, name: str, owner: Any) -> tuple[Any, Any]:
    """(listing, contract) of a published model whose card a trusted provider signed; BatchError otherwise."""
    from sdk.models import find_model
    from sdk.owner import BatchError

    model = find_model(store, name, owner.trusted_providers())
    if model.card is None:
        raise BatchError(f"model {model.name}:{model.version}: its card cannot be used ({model.problem})")
    return model, model.card.contract


def _dry_run_images(args: argparse.Namespace) -> int:
    """Check a folder of images against the chosen model's card; reads the card, uploads nothing, creates no key."""
    from sdk.images import check_images
    from sdk.owner import BatchError
    from sdk.party import Party
    from sdk.storage import ObjectStore

    if args.emails is None or args.model is None:
        raise BatchError("owner submit --dry-run --images: expected a folder of images and --model NAME:VERSION")
    _load_stack_env(args.state_dir)
    model, contract = _carded_model(ObjectStore(), args.model, Party.from_env("owner"))
    reports = check_images(args.emails, contract, f"{model.name}:{model.version}")
    refused = [r for r in reports if r.error]
    if args.json:
        print(json.dumps({"input": str(args.emails), "model": f"{model.name}:{model.version}", "ok": not refused,
                          "images": len(reports) - len(refused), "files": [
                              {"file": r.file, "width": r.width, "height": r.height, "error": r.error}
                              for r in reports]}))
    else:
        for r in refused:
            print(f"REFUSED {r.error}")
        verdict = "would be REFUSED: fix the files above" if refused else "ready to submit"
        print(f"{len(reports) - len(refused)} image(s) fit {model.name}:{model.version}, {len(refused)} refused: "
              f"{verdict} (dry run: nothing uploaded, no key created)")
    return 2 if refused else 0


def _dry_run_numbers(args: argparse.Namespace) -> int:
    """Check a CSV or Parquet table against the chosen model's card; reads the card, uploads nothing, creates no
    key."""
    from sdk.numbers import check_numbers
    from sdk.owner import BatchError
    from sdk.party import Party
    from sdk.storage import ObjectStore

    if args.emails is None or args.model is None:
        raise BatchError("owner submit --dry-run --numbers: expected a CSV or Parquet file and --model NAME:VERSION")
    _load_stack_env(args.state_dir)
    model, contract = _carded_model(ObjectStore(), args.model, Party.from_env("owner"))
    report = check_numbers(args.emails, contract, f"{model.name}:{model.version}")
    ok = not report.refused and report.rows > 0
    if args.json:
        print(json.dumps({"input": str(args.emails), "model": f"{model.name}:{model.version}", "ok": ok,
                          "rows": report.rows, "columns": list(report.columns), "refused": report.refused,
                          "errors": list(report.errors)}))
        return 0 if ok else 2
    for error in report.errors:
        print(f"REFUSED {error}")
    if report.refused > len(report.errors):
        print(f"... and {report.refused - len(report.errors)} more refused field(s)")
    verdict = ("ready to submit" if ok else "would be REFUSED: fix the fields above" if report.refused
               else "would be REFUSED: no rows")
    print(f"{report.rows} row(s) of {len(report.columns)} numeric column(s) for {model.name}:{model.version}, "
          f"{report.refused} field(s) refused: {verdict} (dry run: nothing uploaded, no key created)")
    return 0 if ok else 2


def _dry_run(args: argparse.Namespace) -> int:
    """Read and check EMAILS as a submit would, and report; contacts neither S3 nor a broker."""
    from sdk.emails import check_input

    if args.emails is None:
        raise ValueError("owner submit --dry-run: expected EMAILS (a file or folder), got none")
    reports = check_input(args.emails)
    refused = [r for r in reports if r.error]
    total = sum(r.emails for r in reports)
    ok = not refused and total > 0
    if args.json:
        print(json.dumps({"input": str(args.emails), "ok": ok, "emails": total, "files": [
            {"file": r.file, "emails": r.emails, "error": r.error,
             "flagged": [{"message_id": e.message_id, "problems": list(e.flags)} for e in r.flagged]}
            for r in reports]}))
        return 0 if ok else 2
    quiet = [r for r in reports if r.emails == 1 and not r.flagged and not r.error]
    for r in reports:
        if r not in quiet or len(reports) <= 20:
            state = f"REFUSED after {r.emails} email(s): {r.error}" if r.error else f"{r.emails} email(s)"
            print(f"{r.file}: {state}" + (f", {len(r.flagged)} flagged" if r.flagged else ""))
        for e in r.flagged:
            print(f"  flagged {e.message_id}: {'; '.join(e.flags)}")
    if len(reports) > 20 and quiet:
        print(f"({len(quiet)} files of one email each, not listed; --json lists every file)")
    flagged = sum(len(r.flagged) for r in reports)
    verdict = ("ready to submit" if ok else "would be REFUSED: fix the files above" if refused
               else "would be REFUSED: no emails")
    print(f"{total} email(s) in {len(reports)} file(s), {flagged} flagged, {len(refused)} refused: {verdict} "
          "(dry run: nothing uploaded, no key created)")
    return 0 if ok else 2


def cmd_owner_results(args: argparse.Namespace) -> int:
    import tempfile

    from cscore.progress import progress

    if args.format and not args.out:
        raise ValueError(f"--format {args.format}: expected --out FILE to write the results to, got none")
    with progress(f"batch {args.batch}: waiting") as waiting:
        # At a terminal the spinner is up before the storage, broker and Parquet libraries load (~0.6 CPU s).
        from sdk.owner import wait_for_batch
        from sdk.party import Party
        from sdk.platform_text import advice, shown
        from sdk.results import owner_trust, write_results
        from sdk.results_file import output_format
        from sdk.storage import ObjectStore

        fmt = output_format(args.out, args.format) if args.out else None  # refused before anything is fetched
        _load_stack_env(args.state_dir)
        store = ObjectStore()
        status = wait_for_batch(store, args.tenant, args.batch, timeout=args.wait,
                                progress=lambda state: waiting.describe(f"batch {args.batch}: {state}"))
    if status["state"] != "succeeded":
        reason = shown(status.get("reason"))  # the platform wrote it: no escape reaches the terminal
        print(f"batch {args.batch} failed: {reason}\n{advice(reason, args.batch, args.tenant)}", file=sys.stderr)
        return 1
    owner = Party.from_env("owner")
    # The measurements this owner granted the batch, from its own broker: what it audited (a release, or the
    # simulated measurement of its checkout), so no measurement is recomputed here.
    granted = owner.broker().get_grant(args.batch)
    anchors, policy = owner_trust(accept_simulated=args.accept_simulated,
                                  measurements=[str(m) for m in granted.get("measurements", [])])
    # Shard by shard into a file (the summary reads it back a row group at a time): memory bounded, any size.
    if args.out:  # the verified plaintext is written beside --out, not in a shared temporary folder
        args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cscore-results-", dir=args.out.parent if args.out else None) as folder:
        with progress("verifying, fetching and decrypting results", unit="rows") as fetching:
            results = write_results(Path(folder) / "results.parquet", args.tenant, args.batch, owner=owner,
                                    store=store, anchors=anchors, policy=policy,
                                    progress=lambda rows, total: fetching.advance(rows, total))
        if args.out and fmt:
            _write_out(results, args.out, fmt, owner, args.tenant, args.batch)
        if "spam_probability" not in results.columns:
            return _generic_results(args, results)
        return _spam_results(args, results)


def _spam_results(args: argparse.Namespace, results: Any) -> int:
    """The spam summary of a verified results file, read a row group at a time."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    counts, spam, flagged = histogram([]), 0, 0
    lowest_spam: float | None = None
    highest_ham: float | None = None
    wanted = ["spam_probability", "label"] + (["flags"] if "flags" in results.columns else [])
    with pq.ParquetFile(results.path) as file:
        for batch in file.iter_batches(columns=wanted):
            p, y = batch.column("spam_probability"), batch.column("label")
            counts = [a + b for a, b in zip(counts, histogram(p.to_pylist()), strict=True)]
            is_spam = pc.equal(y, 1)
            spam += pc.sum(is_spam).as_py() or 0
            lowest_spam = _either(min, lowest_spam, pc.min(pc.filter(p, is_spam)).as_py())
            highest_ham = _either(max, highest_ham, pc.max(pc.filter(p, pc.equal(y, 0))).as_py())
            if "flags" in wanted:
                flagged += pc.sum(pc.not_equal(batch.column("flags"), "")).as_py() or 0
    summary = {"batch_id": args.batch, "tee": tee_line([str(r.claims.root) for r in results.receipts]),
               "emails_scored": results.rows, "spam_found": spam,
               **({"emails_flagged": flagged} if "flags" in wanted else {}),
               "label_rule": label_rule_seen(lowest_spam, highest_ham),
               "receipts_verified": len(results.receipts), "measurements": ", ".join(results.measurements),
               "results": str(args.out) if args.out else "not written (add --out FILE to keep them)"}
    if args.plot:  # the plot takes every probability: the one part that holds a column
        _plot(pq.read_table(results.path, columns=["spam_probability"]).column(0).to_pylist(), args.plot,
              f"Batch {args.batch}: spam probability")
    if args.json:
        print(json.dumps({**summary, "histogram": counts}))
        return 0
    print("\n".join(f"{k.replace('_', ' '):18} {v}" for k, v in summary.items()))
    print("\nspam probability (emails per bin)\n" + "\n".join(histogram_lines_of(counts)))
    return 0


def _write_out(results: Any, out: Path, fmt: str, owner: Any, tenant: str, batch_id: str) -> None:
    """The verified results file as `out` in `fmt`, a row group at a time; email results joined to each email's
    from, subject and date from this machine's journal of the batch (`sdk.journal`). Without one (submitted
    elsewhere, or by an older cscore) those are empty, and a warning says why."""
    from contextlib import ExitStack

    import pyarrow.parquet as pq

    from enclave.pme import PmeKeys
    from sdk.journal import HeaderJoin, journal_path, open_journal
    from sdk.results_file import write_results_file

    with pq.ParquetFile(results.path) as verified:
        batches = verified.iter_batches()
        if "spam_probability" not in results.columns:
            write_results_file(batches, verified.schema_arrow, out, fmt)
            return
        path = journal_path(owner.home, tenant, batch_id)
        if not path.exists():
            print(f"warning: no journal of batch {batch_id} at {path} (it was submitted from another machine or "
                  "another state directory): from, subject and date are left empty", file=sys.stderr)
        with PmeKeys(owner.broker().for_batch(batch_id)) as keys, ExitStack() as opened:
            journal = opened.enter_context(open_journal(path, keys, tenant=tenant, batch_id=batch_id)) \
                if path.exists() else None
            join = HeaderJoin(journal)
            write_results_file((join(b) for b in batches), join.schema(verified.schema_arrow), out, fmt)


def _either(pick: Callable[[float, float], float], held: float | None, seen: float | None) -> float | None:
    """`pick` of two values either of which may be missing (None: no row of that kind yet)."""
    return seen if held is None else held if seen is None else pick(held, seen)


def _generic_results(args: argparse.Namespace, results: Any) -> int:
    """Any model's verified results file: rows, receipts, and the first rows as the card's columns name them."""
    from collections import Counter

    import pyarrow.parquet as pq

    summary = {"batch_id": args.batch, "tee": tee_line([str(r.claims.root) for r in results.receipts]),
               "rows_scored": results.rows, "columns": ", ".join(results.columns),
               "receipts_verified": len(results.receipts), "measurements": ", ".join(results.measurements),
               "results": str(args.out) if args.out else "not written (add --out FILE to keep them)"}
    first: list[dict[str, Any]] = []
    classes: Counter[Any] = Counter()
    with pq.ParquetFile(results.path) as file:
        for batch in file.iter_batches():
            if len(first) < 10:
                first.extend(batch.slice(0, 10 - len(first)).to_pylist())
            if "class" in results.columns:
                classes.update(batch.column("class").to_pylist())
    if "class" in results.columns:
        summary["rows_per_class"] = dict(sorted(classes.items()))
    if args.json:
        print(json.dumps(summary))
        return 0
    print("\n".join(f"{k.replace('_', ' '):18} {v}" for k, v in summary.items()))
    for row in first:
        print("  " + "  ".join(f"{k}={_short(v)}" for k, v in row.items()))
    return 0


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cmd_worker_measure(args: argparse.Namespace) -> int:
    if args.simulated:
        from enclave.measurement import code_measurement, measurement_components

        components = {label: value.hex() for label, value in measurement_components()}
        if args.json:
            print(json.dumps({"simulated": code_measurement().hex(), "components": components}))
        else:
            print("\n".join([f"simulated TEE measurement {code_measurement().hex()}  (SIMULATED: development only)",
                             *(f"  {label:40} {value}" for label, value in components.items())]))
        return 0
    from cscore import worker_measure as wm

    manifest = wm.read_image_manifest(args.image) if args.image else {}

    def artifact(flag: Path | None, key: str) -> Path | None:
        return flag if flag is not None else (args.image / manifest[key] if manifest.get(key) else None)

    ovmf = artifact(args.ovmf, "ovmf")
    if ovmf is None and args.config is not None:  # the configuration's digest needs no image (README: HOST_DATA)
        host = wm.snp_host_data(wm.config_digest_of_file(args.config)).hex()
        print(json.dumps({"host_data": host, "tdx_mrconfigid": host + "00" * 16}) if args.json else
              f"HOST_DATA (SNP)      {host}\nMRCONFIGID (TDX)     {host}{'00' * 16}\n"
              "(launch measurement: add --ovmf FILE or --image DIR)")
        return 0
    if ovmf is None:
        raise wm.MeasureError("--ovmf: expected the OVMF firmware (or --image DIR with image.json), got neither")
    exp = wm.expected(ovmf, artifact(args.kernel, "kernel"), artifact(args.initrd, "initrd"),
                      args.append if args.append is not None else manifest.get("cmdline"), args.vcpus,
                      args.vcpu_type or ["EPYC-Milan", "EPYC-Genoa"], args.guest_features, args.vmm, args.config)
    print(json.dumps(exp.as_dict(), indent=2) if args.json else wm.render_text(exp))
    return 0


def _add_release_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--release", type=Path, help="signed release of worker measurements (allows its SEV-SNP "
                        "measurements); without it or --measurement: the local stack's SIMULATED measurement")
    parser.add_argument("--release-key", type=Path, help="the project's release public key (PEM) to verify it with")


def cmd_worker_release(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cscore.release import ReleaseError, release_from_measure, sign_release

    key = serialization.load_pem_private_key(args.key.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"--key {args.key}: expected an Ed25519 private key (openssl genpkey -algorithm ed25519)")
    measure = _json_file(args.measure, "the output of `cscore worker measure --json`",
                         "write it with `cscore worker measure --image DIR --json > measure.json`")
    signed = sign_release(release_from_measure(measure, name=args.name, sbom=args.sbom), key)
    args.out.write_text(json.dumps(signed, indent=2, sort_keys=True) + "\n")
    count = len(signed["release"]["sev_snp"])
    print(json.dumps({"release": args.name, "sev_snp_measurements": count, "out": str(args.out)}) if args.json else
          f"signed release {args.name}: {count} SEV-SNP measurements -> {args.out}")
    return 0


def _add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser("worker", help="the worker image's commands").add_subparsers(dest="action", required=True)
    measure = worker.add_parser("measure", help="expected launch measurement of the worker image, and its policy")
    measure.add_argument("--image", type=Path, help="built image folder (image.json from infra/image/build.sh)")
    measure.add_argument("--ovmf", type=Path, help="OVMF firmware (AmdSevX64 build, measured direct boot)")
    measure.add_argument("--kernel", type=Path)
    measure.add_argument("--initrd", type=Path)
    measure.add_argument("--append", help="kernel command line, exactly as QEMU's -append")
    measure.add_argument("--vcpus", type=int, default=2)
    measure.add_argument("--vcpu-type", action="append", help="QEMU CPU model (repeatable; default EPYC-Milan, "
                         "EPYC-Genoa)")
    measure.add_argument("--guest-features", type=lambda v: int(v, 0), default=0x1,
                         help="VMSA SEV_FEATURES (default 0x1: SNPActive)")
    measure.add_argument("--vmm", choices=["qemu", "ec2", "gce"], default="qemu")
    measure.add_argument("--config", type=Path, help="worker configuration document: its digest is HOST_DATA")
    measure.add_argument("--simulated", action="store_true",
                         help="print the simulated TEE's measurement of this checkout instead, with its components")
    measure.add_argument("--json", action="store_true")
    measure.set_defaults(func=cmd_worker_measure)
    release = worker.add_parser("release", help="sign a release of measurements (from `worker measure --json`)")
    release.add_argument("measure", type=Path, help="output of `cscore worker measure --json`")
    release.add_argument("--name", required=True, help="release name, e.g. 0.2.0")
    release.add_argument("--key", type=Path, required=True, help="release signing key (Ed25519, PEM)")
    release.add_argument("--sbom", type=Path, help="the image's SBOM; its SHA-256 goes into the release")
    release.add_argument("--out", type=Path, required=True)
    _add_json(release)
    release.set_defaults(func=cmd_worker_release)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; `command` (the subcommand named, see `_command`) builds only the heavy subtree it needs."""
    parser = argparse.ArgumentParser(prog="cscore", description=__doc__, epilog="exit status: 0 done; 1 the work "
                                     "ran and its outcome is negative (a batch failed, an audit does not hold, "
                                     "evidence rejected); 2 an error (usage, input, configuration, a server that does "
                                     "not answer, results that do not verify); 130 interrupted. docs/CLI.md")
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="local stack state (default $CSCORE_STATE_DIR, else .state/demo)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole pipeline end to end on the embedded default")
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument("--keep", action="store_true", help="leave the stack running")
    demo.add_argument("--json", action="store_true")
    demo.add_argument("--plot", type=Path, metavar="FILE", help="also draw the score histogram as a PNG here")
    demo.add_argument("--example", choices=["spam", "images"], default="spam",
                      help="spam: emails and the spam filter (default); images: digit scans and an image classifier")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="confidential vs plaintext throughput through the same DAG and workers")
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--scale", "--copies", type=int, default=2, dest="scale",
                       help="copies of the 2,418 held-out emails per batch (40 is ~97k emails)")
    bench.add_argument("--workers", type=int, default=2)
    bench.add_argument("--emails", type=int, default=None,
                       help="emails per batch instead of --scale (--emails 101: the fixed cost per batch)")
    bench.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (model load, first attestation)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)

    stack = sub.add_parser("stack", help="start or stop the local stack")
    stack.add_argument("action", choices=["start", "stop"])
    stack.add_argument("--workers", type=int, default=2)
    stack.add_argument("--no-airflow", action="store_true")
    _add_json(stack)
    stack.set_defaults(func=cmd_stack)

    models = sub.add_parser("models", help="the marketplace: published models, their terms and who signed them")
    models.add_argument("--task", help="only this task (text-classification, image-classification, ...)")
    models.add_argument("--json", action="store_true")
    models.add_argument("--tenant", help="also your tuned models (`cscore owner train`), verified for this tenant")
    models.add_argument("--accept-simulated", action="store_true",
                        help="with --tenant: trust tuned cards from the simulated TEE (development stacks only)")
    models.set_defaults(func=cmd_models)

    provider = sub.add_parser("provider", help="the model provider's commands").add_subparsers(dest="action",
                                                                                               required=True)
    publish = provider.add_parser("publish", help="encrypt and publish an ONNX model")
    publish.add_argument("model", type=Path)
    publish.add_argument("--name", required=True)
    publish.add_argument("--measurement", action="append", help="enclave measurement allowed (hex); repeatable")
    _add_release_arguments(publish)
    publish.add_argument("--probability-digits", type=int, default=None,
                         help="round probabilities owners receive to N digits (0: labels only; default: full)")
    publish.add_argument("--quota-rows", type=int, help="rows per owner per period (metered by your broker)")
    publish.add_argument("--quota-period-s", type=int, default=30 * 86400, help="quota period in seconds")
    publish.add_argument("--task", default="text-classification",
                         help="text-classification, image-classification, tabular-classification or regression")
    publish.add_argument("--contract", type=Path, help="the model's contract (JSON, see wire/contract.py): which "
                         "columns feed which tensors, which outputs become results; default: the spam filter's")
    publish.add_argument("--metric", action="append", metavar="NAME=NUMBER", help="a metric you claim; repeatable")
    publish.add_argument("--price-per-1000", type=float, help="price per 1000 rows scored")
    publish.add_argument("--currency", default="EUR")
    publish.add_argument("--description")
    _add_provider_argument(publish)
    _add_json(publish)
    publish.set_defaults(func=cmd_provider_publish)
    recipe = provider.add_parser("publish-recipe", help="encrypt and publish a training recipe (cscore.recipe/v1 "
                                 "JSON: features, hyperparameters, seed), its key held by your broker")
    recipe.add_argument("recipe", type=Path)
    recipe.add_argument("--name", required=True)
    recipe.add_argument("--measurement", action="append", help="enclave measurement allowed (hex); repeatable")
    _add_release_arguments(recipe)
    _add_provider_argument(recipe)
    _add_json(recipe)
    recipe.set_defaults(func=cmd_provider_publish_recipe)
    key = provider.add_parser("key", help="print the provider's public card-signing key, for owners to pin")
    _add_provider_argument(key)
    _add_json(key, "(it prints JSON either way)")
    key.set_defaults(func=cmd_provider_key)
    register_owner = provider.add_parser("register-owner", help="accept model grants of an owner's key broker "
                                         "(its key from `cscore owner grant-key`)")
    register_owner.add_argument("name", help="the owner broker's name (as in the workers' configuration)")
    register_owner.add_argument("key", type=Path)
    _add_provider_argument(register_owner)
    _add_json(register_owner)
    register_owner.set_defaults(func=cmd_provider_register_owner)
    usage = provider.add_parser("usage", help="rows scored per owner, from the enclaves' signed usage records")
    usage.add_argument("--model", required=True)
    usage.add_argument("--measurement", action="append",
                       help="enclave measurement to accept records from (hex); repeatable; default: those your "
                            "broker releases the model key to")
    usage.add_argument("--accept-simulated", action="store_true",
                       help="trust records from the simulated TEE (development stacks only)")
    _add_provider_argument(usage)
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=cmd_provider_usage)

    owner = sub.add_parser("owner", help="the data owner's commands").add_subparsers(dest="action", required=True)
    grant_key = owner.add_parser("grant-key", help="print your broker's public model-grant key, for providers")
    _add_json(grant_key, "(it prints JSON either way)")
    grant_key.set_defaults(func=cmd_owner_grant_key)
    register = owner.add_parser("register", help="register the tenant's manifest key with the platform")
    register.add_argument("--tenant", required=True)
    register.add_argument("--json", action="store_true")
    register.set_defaults(func=cmd_owner_register)
    train = owner.add_parser("train", help="encrypt labelled mail (folders spam/ and ham/) and submit a training job "
                             "for a provider's recipe; you receive metrics, nobody receives the weights")
    train.add_argument("emails", type=Path, help="a folder holding spam/ and ham/")
    train.add_argument("--recipe", required=True, help="NAME:VERSION of a published recipe")
    train.add_argument("--model-name", required=True, help="name of your tuned model (listed for your tenant only)")
    train.add_argument("--tenant", required=True)
    train.add_argument("--holdout", type=float, default=0.3, help="fraction held out for evaluation (your split)")
    train.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    train.add_argument("--measurement", action="append", help="enclave measurement to grant (hex); repeatable")
    train.add_argument("--wait", type=float, default=1800.0,
                       help="seconds to wait for the job's verified metrics (0: submit only)")
    train.add_argument("--json", action="store_true", help="print the verified outcome as one JSON line")
    train.add_argument("--accept-simulated", action="store_true",
                       help="trust receipts from the simulated TEE (development stacks only)")
    _add_release_arguments(train)
    train.set_defaults(func=cmd_owner_train)
    platform = sub.add_parser("platform", help="the platform operator's commands").add_subparsers(dest="action",
                                                                                                 required=True)
    approve = platform.add_parser("approve-tenant", help="approve a tenant's registration request (its key "
                                                         "thumbprint as the owner told you)")
    approve.add_argument("tenant")
    approve.add_argument("--thumbprint", required=True, help="the key thumbprint the owner gave you out of band")
    approve.add_argument("--replace", action="store_true", help="replace an approved key (the owner rotated it)")
    approve.add_argument("--key-home", type=Path, help="folder of tenant-approver.jwk (default <state>/platform)")
    _add_json(approve)
    approve.set_defaults(func=cmd_platform_approve_tenant)
    submit = owner.add_parser("submit", help="encrypt and submit a batch of emails (or images, or a "
                                "table of numbers, for a model that takes them)")
    submit.add_argument("emails", type=Path, nargs="?", help=".eml folder, mbox, JSON lines or Parquet; for a model "
                        "whose card takes images, a folder of PNG/JPEG files; for one that takes numbers, a CSV or "
                        "Parquet file (each checked before upload)")
    submit.add_argument("--model", help="name or name:version (see `cscore models`); your tuned model as "
                        "TENANT/NAME:VERSION (see `cscore models --tenant TENANT`)")
    submit.add_argument("--accept-simulated", action="store_true",
                        help="with a tuned model: trust its card from the simulated TEE (development stacks only)")
    submit.add_argument("--tenant", required=True)
    submit.add_argument("--measurement", action="append", help="enclave measurement to grant (hex); repeatable")
    _add_release_arguments(submit)
    submit.add_argument("--images", action="store_true", help="EMAILS is a folder of PNG/JPEG files for a model "
                        "whose card takes images: each file is checked against the card before any upload")
    submit.add_argument("--numbers", action="store_true", help="EMAILS is a CSV (header row first) or Parquet "
                        "file for a model whose card takes numbers: its id column and the columns the card names; "
                        "every row and field is checked against the card before any upload")
    submit.add_argument("--resubmit", metavar="BATCH", help="upload a failed batch's manifest again")
    submit.add_argument("--jobs", type=int, metavar="N", help="processes parsing the emails (default: every core)")
    submit.add_argument("--dry-run", action="store_true",
                        help="read and check EMAILS only: emails per file, anything flagged or refused; "
                             "uploads nothing, creates no key, contacts no server (with --images or --numbers: checks "
                             "each file, row and field against --model's card, which it reads from storage)")
    submit.add_argument("--json", action="store_true", help="the submitted batch (or --dry-run's report) as one JSON "
                        "object")
    submit.set_defaults(func=cmd_owner_submit)
    results = owner.add_parser("results", help="fetch, verify and decrypt a batch's results")
    results.add_argument("batch")
    results.add_argument("--tenant", required=True)
    results.add_argument("--out", type=Path, help="write the decrypted results, each email's message_id, from, "
                         "subject, date, spam_probability, label and flags: Parquet, CSV or JSON lines by the "
                         "name's extension (.parquet, .csv, .jsonl) or --format")
    results.add_argument("--format", choices=["parquet", "csv", "jsonl"],
                         help="the --out file's format, when its extension names none (a name that says another "
                              "format is refused)")
    results.add_argument("--wait", type=float, default=900.0, help="seconds to wait for the batch")
    results.add_argument("--json", action="store_true")
    results.add_argument("--plot", type=Path, metavar="FILE", help="also draw the score histogram as a PNG here")
    results.add_argument("--accept-simulated", action="store_true",
                         help="trust receipts from the simulated TEE (development stacks only)")
    trust = owner.add_parser("trust-provider",
                             help="pin a model provider's card-signing key (from `cscore provider key`)")
    trust.add_argument("key", type=Path)
    _add_json(trust)
    trust.set_defaults(func=cmd_owner_trust_provider)
    results.set_defaults(func=cmd_owner_results, skip_native_teardown=True)
    from cscore.stream_cli import add_stream_command

    add_stream_command(owner, _add_release_arguments)
    _add_worker(sub)
    # Their argument definitions live in modules that import the attestation verifier (~0.2 s): built only
    # when the command line names them, so other commands start without those imports.
    if command in (None, "attest"):
        _add_attest(sub, full=command == "attest")
    if command == "audit":
        from audit.cli import add_commands as add_audit_commands

        add_audit_commands(sub)
    elif command is None:  # listed in `cscore --help` only
        sub.add_parser("audit", help="the auditor's tools: verify the log, show a batch's story")
    _state_dir_after_command(parser)
    return parser


def _state_dir_after_command(parser: argparse.ArgumentParser) -> None:
    """`--state-dir` after the subcommand too (`cscore stack stop --state-dir D`), as `stack start` advises;
    SUPPRESS keeps the global one's value when it is not given there. Audit commands have their own."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for child in (c for sub in subs for c in sub.choices.values()):
        _state_dir_after_command(child)
    if not subs and "--state-dir" not in parser._option_string_actions:
        parser.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS,
                            help="local stack state, as before the command")


def _add_json(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("--json", action="store_true", help=f"print the result as one JSON object {note}".strip())


class _Version(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked (not at every start)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print cscore's version and exit", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("cscore")
        except PackageNotFoundError:
            number = "unknown (not installed: run `make setup`)"
        print(f"cscore {number}")
        parser.exit()


def _add_attest(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, full: bool) -> None:
    attest = sub.add_parser("attest", help="verify attestation evidence")
    if not full:
        return
    from attestation import cli as attest_cli

    verify = attest.add_subparsers(dest="action", required=True).add_parser(
        "verify", help="verify an SEV-SNP report or TDX quote and appraise it")
    attest_cli.add_arguments(verify)
    verify.set_defaults(func=attest_cli.run)


def _command(argv: list[str]) -> str | None:
    """The subcommand `argv` names (its first word after the global options), None when it names none."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--state-dir")
    pre.add_argument("command", nargs="?")
    known, _ = pre.parse_known_args(argv)
    return known.command


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = _parser(_command(words)).parse_args(words)
    if args.state_dir is None:
        args.state_dir = default_state_dir()
    try:
        rc = int(args.func(args))
    except KeyboardInterrupt:
        rc = 130
    except BrokenPipeError:  # the reader went away (`cscore models | head`): not an error of ours to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        rc = 141
    except (ValueError, LookupError, RuntimeError, TimeoutError, OSError) as exc:
        # Our errors name the field, the expected and the actual value: show that, not a traceback.
        print(f"cscore: error: {_broker_problem(exc, args.state_dir) or exc}", file=sys.stderr)
        rc = 2
    except Exception as exc:
        advice = _storage_problem(exc, args.state_dir)
        if advice is None:
            raise
        print(f"cscore: error: {advice}", file=sys.stderr)
        rc = 2
    if argv is None and getattr(args, "skip_native_teardown", False):
        _exit_now(rc)
    return rc


def _broker_problem(exc: Exception, state_dir: Path) -> str | None:
    """A broker URL that is unset because the state dir holds no stack: say which folder was looked in (a stack
    started elsewhere is the usual cause); None for any other error. Looks sdk.party up only if it was imported."""
    party = sys.modules.get("sdk.party")
    if party is None or not isinstance(exc, party.BrokerNotConfigured) or (state_dir / "stack.env").exists():
        return None
    return (f"CSCORE_{exc.role.upper()}_BROKER_URL is not set: start the stack (`cscore stack start`), or pass "
            f"--state-dir naming a running one (no {state_dir / 'stack.env'} here), or point it at the {exc.role}'s "
            "key broker")


def _storage_problem(exc: Exception, state_dir: Path) -> str | None:
    """What to do when object storage cannot be reached or signed for (no stack running, most often); None for
    any other error. Looks botocore up only if a command already imported it."""
    errors = sys.modules.get("botocore.exceptions")
    if errors is None:
        return None
    start = (f"start the stack (`cscore stack start`), or pass --state-dir naming a running one (no "
             f"{state_dir / 'stack.env'} here)" if not (state_dir / "stack.env").exists() else
             f"is the stack of {state_dir} still running? Start it again with `cscore stack start`")
    if isinstance(exc, errors.EndpointConnectionError):
        return (f"object storage at {exc.kwargs.get('endpoint_url', '?')} does not answer: {start}; for your own "
                "storage set CSCORE_S3_ENDPOINT")
    if isinstance(exc, errors.NoCredentialsError):
        return (f"no object storage configured (no CSCORE_S3_ENDPOINT, no AWS credentials): {start}; for your own "
                "storage set CSCORE_S3_ENDPOINT, CSCORE_BUCKET and AWS credentials")
    return None


def _exit_now(rc: int) -> None:
    """End the process without the interpreter's teardown (as a program only, never in-process).

    Why: pyarrow's thread pools may still hold Python objects (PME KMS client callbacks, buffers) when the
    interpreter finalizes; an Arrow thread that then takes the GIL is ended by pthread_exit, whose unwinding
    through Arrow's noexcept frames calls std::terminate ("terminate called without an active exception",
    exit 134, after the work was done: apache/arrow#34314, #39862). Everything is written and flushed first.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
