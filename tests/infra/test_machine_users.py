"""Machine accounts (infra/local/machine_users.py, infra/local/jail.py): a machine's folders are its account's
alone (0700), a command runs as that account with no capability and no way back to root, sees the paths it
needs even under a folder only root may enter, and nothing else there; a link planted in a folder does not
turn the hand-over's chown onto a file elsewhere.

Needs root (useradd, chown, mount), as CI runs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from infra.local import jail, machine_users

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import errno, json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").close()
        out[path] = "read"
    except OSError as exc:
        out[path] = errno.errorcode[exc.errno]
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"files": out, "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                  "cap_eff": int(status["CapEff"], 16), "cap_prm": int(status["CapPrm"], 16),
                  "no_new_privs": status["NoNewPrivs"].strip(), "home": os.environ["HOME"],
                  "umask": os.umask(0)}))
"""


def state(tmp_path: Path) -> Path:
    """A state dir under tmp_path (0700, root's: the jail must expose it) with every account's folders."""
    tmp_path.chmod(0o700)
    folder = tmp_path / "state"
    folder.mkdir()
    folder.chmod(0o711)
    for account in machine_users.ACCOUNTS.values():
        machine_users.hand_over(folder, account)
    return folder


def run(folder: Path, key: str, *paths: Path) -> dict[str, object]:
    account = machine_users.account(key)
    assert account is not None
    argv = [*machine_users.launcher(folder, account, REPO), sys.executable, "-c", PROBE, *map(str, paths)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)  # noqa: S603
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_each_account_owns_its_folders_alone(tmp_path: Path) -> None:
    folder = state(tmp_path)
    uids = set()
    for account in machine_users.ACCOUNTS.values():
        uid, gid = machine_users.ensure_user(account.name)
        assert uid != 0 and account.name.startswith(machine_users.PREFIX)
        uids.add(uid)
        for sub in account.folders:
            st = (folder / sub).stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o700), sub
    assert len(uids) == len(machine_users.ACCOUNTS)
    assert machine_users.ensure_user("cscore-platform") == machine_users.ensure_user("cscore-platform")  # idempotent


def test_a_command_runs_as_its_account_reads_its_own_files_and_no_other_accounts(tmp_path: Path) -> None:
    folder = state(tmp_path)
    kek = folder / "brokers" / "owner" / "kek.hex"
    kek.write_text("00" * 32)
    approver = folder / "platform" / "tenant-approver.jwk"
    approver.write_text("{}")
    machine_users.hand_over(folder, machine_users.ACCOUNTS["owner-broker"])
    machine_users.hand_over(folder, machine_users.ACCOUNTS["platform"])
    sibling = tmp_path / "root-only.txt"  # beside the state dir, in a folder only root may enter
    sibling.write_text("root's")
    sibling.chmod(0o644)

    report = run(folder, "platform", kek, folder / "brokers" / "owner", folder / "owner", approver, sibling)
    uid, gid = machine_users.ensure_user("cscore-platform")
    assert report["files"] == {str(kek): "EACCES", str(folder / "brokers" / "owner"): "EACCES",
                               str(folder / "owner"): "EACCES", str(approver): "read",
                               str(sibling): "ENOENT"}  # the tmpfs over tmp_path shows the state dir only
    assert (report["uid"], report["gid"], report["groups"]) == (uid, gid, [])
    assert (report["cap_eff"], report["cap_prm"], report["no_new_privs"]) == (0, 0, "1")
    assert (report["home"], report["umask"]) == (str(folder / "platform"), 0o077)
    assert sibling.read_text() == "root's"  # outside the jail nothing was covered

    mine = run(folder, "owner-broker", kek, approver)
    assert mine["files"] == {str(kek): "read", str(approver): "EACCES"}


def test_the_hand_over_follows_no_link_planted_in_a_folder(tmp_path: Path) -> None:
    folder = state(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "system-file"
    target.write_text("root's")
    platform = folder / "platform"
    (platform / "link-to-file").symlink_to(target)
    (platform / "link-to-folder").symlink_to(outside)
    os.link(target, platform / "hard-link")  # what a user could do to a file it may read

    uid, _ = machine_users.hand_over(folder, machine_users.ACCOUNTS["platform"])
    assert (target.stat().st_uid, outside.stat().st_uid) == (0, 0)
    assert os.lstat(platform / "link-to-file").st_uid == uid  # the link itself, not what it points at


def test_the_jail_refuses_to_run_as_root() -> None:
    with pytest.raises(SystemExit):
        jail.main(["--uid", "0", "--gid", "0", "--user", "root", "--home", "/", "--", "true"])


def test_a_machine_gets_its_own_copy_of_each_certificate_the_supervisor_names(tmp_path: Path) -> None:
    folder = state(tmp_path)
    ca = folder / "tls" / "redis" / "ca.pem"
    ca.parent.mkdir(parents=True)
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"URL": f"rediss://u:p@10.1.2.3:6379/0?ssl_cert_reqs=required&ssl_ca_certs={ca}",
           "CONN": json.dumps({"extra": {"broker_url": f"rediss://h/0?ssl_ca_certs={ca}"}}), "OTHER": "/tmp/x"}
    own = machine_users.own_copies(env, folder, machine_users.ACCOUNTS["platform"])
    copy = folder / "platform" / "tls" / "redis" / "ca.pem"
    assert own == {"URL": env["URL"].replace(str(ca), str(copy)), "OTHER": "/tmp/x",
                   "CONN": json.dumps({"extra": {"broker_url": f"rediss://h/0?ssl_ca_certs={copy}"}})}
    assert copy.read_text() == ca.read_text()
    assert machine_users.own_copies({"OTHER": "/tmp/x"}, folder, machine_users.ACCOUNTS["platform"]) == {
        "OTHER": "/tmp/x"}
