"""Sharing results through a DVC remote, against real servers: an OpenSSH server on 127.0.0.1 (an `ssh://`
remote through dvc-ssh) and a local-directory remote (a shared filesystem). Teammate A runs the tiny pipeline
once per module; fresh `git clone`s play the teammates who pull. Everything goes through the real git and dvc CLIs."""

from __future__ import annotations

import csv
import getpass
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import BIN, copy_built, dvc, env, git, ran_stages

pytestmark = pytest.mark.slow  # every test here drives a whole `dvc repro`

SSHD = Path("/usr/sbin/sshd")  # sshd must be started by absolute path (it re-executes itself)


def require_ssh() -> None:
    """Skip without an OpenSSH server; under CI fail instead, so the SSH tests cannot vanish silently."""
    missing = [
        what
        for what, present in (
            (f"{SSHD} (apt-get install openssh-server)", SSHD.exists()),
            (
                "ssh-keygen and sftp (apt-get install openssh-client)",
                shutil.which("ssh-keygen") and shutil.which("sftp"),
            ),
            ("dvc-ssh (pip install -e '.[ssh]')", importlib.util.find_spec("dvc_ssh")),
        )
        if not present
    ]
    if missing:
        reason = "the SSH remote tests need " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
        pytest.skip(reason)


def free_port() -> int:
    """A loopback port nothing listens on (also what an unreachable remote looks like)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digest(root: Path, *parts: str) -> dict[str, str]:
    """sha256 of every file under `parts` of `root`, by path relative to `root`."""
    found = {}
    for part in parts:
        base = root / part
        for path in sorted(base.rglob("*")) if base.is_dir() else [base]:
            if path.is_file():
                found[path.relative_to(root).as_posix()] = sha256(path)
    return found


def results(repo: Path) -> dict[str, str]:
    """What a teammate should end up with: prepared data, checkpoints and encoders, metrics, plots."""
    return digest(repo, "data/prepared", "models", "metrics", "plots")


def local_state(repo: Path) -> dict[str, str]:
    """Workspace outputs, lock and params, and the whole local cache (objects and run-cache)."""
    return {**results(repo), **digest(repo, "dvc.lock", "params.yaml", ".dvc/cache")}


def run_entries(cache: Path) -> set[str]:
    runs = cache / "runs"
    return {p.relative_to(runs).as_posix() for p in runs.rglob("*") if p.is_file()}


def stored_objects(store: Path) -> dict[str, str]:
    """Complete objects in a remote's (or cache's) `files/md5`, by relative path -> md5 of their content.
    In-flight uploads are hidden `.*.tmp` files and are left out."""
    root = store / "files" / "md5"
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def object_path(store: Path, file: Path) -> Path:
    md5 = hashlib.md5(file.read_bytes()).hexdigest()
    return store / "files" / "md5" / md5[:2] / md5[2:]


# --- the servers -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSHServer:
    port: int
    user: str
    key: Path  # the client key listed in authorized_keys
    stranger: Path  # a key the server has never seen

    @staticmethod
    def url(path: Path) -> str:
        return f"ssh://127.0.0.1{path}"


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}:\n{log.read_text()}", pytrace=False)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port} within {timeout} s:\n{log.read_text()}", pytrace=False)


def check_login(server: SSHServer, log: Path) -> None:
    """One SFTP login with OpenSSH's own client, so a server that refuses the key says why (e.g. a locked
    account) here, and not as a puzzling DVC error in every test."""
    options = ("BatchMode=yes", "IdentitiesOnly=yes", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null")
    proc = subprocess.run(
        [
            "sftp",
            "-b",
            "-",
            "-i",
            str(server.key),
            "-P",
            str(server.port),
            *(arg for option in options for arg in ("-o", option)),
            f"{server.user}@127.0.0.1",
        ],
        input="pwd\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        pytest.fail(f"sshd refused the test key:\n{proc.stderr}\n--- sshd log\n{log.read_text()}", pytrace=False)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A standalone OpenSSH server on a free loopback port: its own host key, config and authorized_keys."""
    require_ssh()
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "stranger_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        textwrap.dedent(f"""\
        ListenAddress 127.0.0.1
        Port {port}
        HostKey {d / "host_key"}
        PidFile {d / "sshd.pid"}
        AuthorizedKeysFile {d / "authorized_keys"}
        PubkeyAuthentication yes
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        PermitRootLogin prohibit-password
        # the keys sit under the world-writable /tmp, which sshd's ownership checks reject
        StrictModes no
        # in-process SFTP: does not depend on where the distribution puts sftp-server
        Subsystem sftp internal-sftp
        """)
    )
    if os.geteuid() == 0:  # sshd started by root needs its privilege-separation dir, as the Debian service makes it
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = d / "sshd.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, log)
        server = SSHServer(port, getpass.getuser(), d / "client_key", d / "stranger_key")
        check_login(server, log)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ssh_credentials(
    repo: Path, remote: str, server: SSHServer, *, port: int | None = None, key: Path | None = None
) -> None:
    """What each teammate sets for themselves: .dvc/config.local only, never committed."""
    dvc("remote", "modify", "--local", remote, "user", server.user, cwd=repo)
    dvc("remote", "modify", "--local", remote, "port", str(port or server.port), cwd=repo)
    dvc("remote", "modify", "--local", remote, "keyfile", str(key or server.key), cwd=repo)


def add_ssh_remote(repo: Path, remote: str, store: Path, server: SSHServer, **credentials) -> None:
    dvc("remote", "add", "--local", remote, server.url(store), cwd=repo)
    dvc("remote", "modify", "--local", remote, "verify", "true", cwd=repo)  # as docs/team.md sets up every remote
    ssh_credentials(repo, remote, server, **credentials)


# --- teammate A publishes ----------------------------------------------------------------------------------


@dataclass
class Published:
    a: Path  # the teammate who ran the pipeline
    origin: Path  # the bare git repository everyone clones
    nas: Path  # the local-directory remote
    store: Path  # the SSH remote's directory on the server
    results: dict[str, str]  # A's results right after `dvc repro`
    runs: set[str]  # A's run-cache entries at push time


@pytest.fixture(scope="module")
def published(tiny_reproduced, tmp_path_factory) -> Published:
    """A has run the tiny pipeline (a copy of the session's whole `dvc repro`, its own cache and run-cache),
    commits, pushes to the shared-filesystem remote and to a git remote."""
    root = tmp_path_factory.mktemp("team")
    a = copy_built(tiny_reproduced[0], root / "a")
    store, nas = root / "ssh-store", root / "nas"
    store.mkdir()
    nas.mkdir()
    dvc("remote", "add", "-d", "team", SSHServer.url(store), cwd=a)  # committed: the URL and verify, no credential
    dvc("remote", "modify", "team", "verify", "true", cwd=a)  # pulls hash what they download (docs/team.md)
    dvc("remote", "add", "--local", "nas", str(nas), cwd=a)  # mount points differ from machine to machine
    dvc("remote", "modify", "--local", "nas", "verify", "true", cwd=a)
    git("add", "-A", cwd=a)
    git("commit", "-q", "-m", "tiny run, team remote", cwd=a)
    dvc("push", "--run-cache", "-r", "nas", cwd=a)
    origin = root / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin), cwd=root)
    git("remote", "add", "origin", str(origin), cwd=a)
    git("push", "-q", "origin", "main", cwd=a)
    return Published(a, origin, nas, store, results(a), run_entries(a / ".dvc" / "cache"))


@pytest.fixture(scope="module")
def over_ssh(sshd: SSHServer, published: Published) -> Published:
    """A also pushes data, checkpoints and run-cache to the SSH remote (the default remote)."""
    ssh_credentials(published.a, "team", sshd)
    dvc("push", "--run-cache", cwd=published.a)
    return published


def clone(published: Published, dest: Path) -> Path:
    git("clone", "-q", str(published.origin), str(dest), cwd=dest.parent)
    return dest


@pytest.fixture(scope="module")
def from_nas(published: Published, tmp_path_factory) -> Path:
    """Teammate B: a fresh clone that pulled everything from the shared-filesystem remote."""
    b = clone(published, tmp_path_factory.mktemp("nas-teammate") / "b")
    dvc("remote", "add", "--local", "nas", str(published.nas), cwd=b)
    dvc("remote", "modify", "--local", "nas", "verify", "true", cwd=b)
    dvc("pull", "--run-cache", "-r", "nas", cwd=b)
    return b


# --- the tests ---------------------------------------------------------------------------------------------


def assert_reproduces_nothing(repo: Path, expected: dict[str, str]) -> None:
    proc = dvc("repro", cwd=repo)
    assert ran_stages(proc.stdout + proc.stderr) == set(), proc.stdout
    assert "Data and pipelines are up to date." in proc.stdout
    assert results(repo) == expected  # byte-identical checkpoints, encoders, data, metrics, plots
    assert git("status", "--porcelain", cwd=repo).stdout == ""


def test_credentials_stay_out_of_git(sshd: SSHServer, over_ssh: Published):
    a = over_ssh.a
    committed = git("show", "HEAD:.dvc/config", cwd=a).stdout
    assert SSHServer.url(over_ssh.store) in committed and "verify = true" in committed
    for private in (str(sshd.key), "keyfile", "password", "user", "port"):
        assert private not in committed, f"{private!r} in the committed .dvc/config:\n{committed}"
    assert str(sshd.key) in (a / ".dvc" / "config.local").read_text()
    git("check-ignore", "-q", ".dvc/config.local", cwd=a)  # exits 1 (and so fails) when not ignored
    assert "config.local" not in git("ls-files", cwd=a).stdout
    assert "config.local" not in git("status", "--porcelain", "--untracked-files=all", cwd=a).stdout


def test_teammate_pulls_from_a_shared_directory_and_reruns_nothing(published: Published, from_nas: Path):
    assert published.runs and published.runs <= run_entries(from_nas / ".dvc" / "cache")
    assert_reproduces_nothing(from_nas, published.results)


def test_teammate_pulls_over_ssh_and_reruns_nothing(sshd: SSHServer, over_ssh: Published, tmp_path):
    b = clone(over_ssh, tmp_path / "b")
    ssh_credentials(b, "team", sshd)
    dvc("pull", "--run-cache", cwd=b)
    assert over_ssh.runs <= run_entries(b / ".dvc" / "cache")
    assert_reproduces_nothing(b, over_ssh.results)

    # The pulled run records alone, without dvc.lock (say, lost in a merge), restore the stages whose outputs
    # are all cached. Later stages also write `cache: false` metrics, which no push uploads
    # (docs/team.md#what-the-run-cache-does-and-does-not-buy-here).
    git("rm", "-q", "dvc.lock", cwd=b)
    proc = dvc("repro", "init_random", cwd=b)
    assert ran_stages(proc.stdout + proc.stderr) == set(), proc.stdout
    for stage in ("download", "init_random"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in proc.stdout, proc.stdout


def test_unreachable_remote_or_wrong_key_fails_clearly_and_changes_nothing(
    sshd: SSHServer, published: Published, from_nas: Path
):
    closed = free_port()
    add_ssh_remote(from_nas, "unreachable", published.store, sshd, port=closed)
    add_ssh_remote(from_nas, "wrong-key", published.store, sshd, key=sshd.stranger)
    before = local_state(from_nas)
    expected = {
        "unreachable": ("Connect call failed", f"'127.0.0.1', {closed}"),
        "wrong-key": ("Permission denied for user", "127.0.0.1"),
    }
    for remote, words in expected.items():
        for command in ("push", "pull"):
            proc = dvc(command, "-r", remote, cwd=from_nas, check=False)
            out = proc.stdout + proc.stderr
            assert proc.returncode != 0, f"dvc {command} -r {remote} succeeded:\n{out}"
            assert all(w in out for w in words) and "Traceback" not in out, f"dvc {command} -r {remote}:\n{out}"
    assert local_state(from_nas) == before


def test_pull_from_a_remote_missing_objects_names_them_and_a_push_repairs_it(published: Published, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(published.nas, damaged)
    lost = {
        rel: object_path(damaged, published.a / rel)
        for rel in ("models/original/checkpoint.pt", "data/prepared/train_images.npy")
    }
    for obj in lost.values():
        obj.unlink()

    c = clone(published, tmp_path / "c")
    dvc("remote", "add", "--local", "damaged", str(damaged), cwd=c)
    proc = dvc("pull", "-r", "damaged", cwd=c, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "failed to pull data" in out, out
    for obj in lost.values():
        assert obj.parent.name + obj.name in out  # DVC names the missing objects by hash...
    status = dvc("status", "--cloud", "-r", "damaged", cwd=c).stdout
    assert all(rel in status for rel in lost), status  # ...and `dvc status -c` by workspace path
    got = results(c)
    assert not lost.keys() & got.keys()
    assert all(published.results[rel] == h for rel, h in got.items())  # nothing half-written

    # Whoever still has the objects pushes them again. A lone file goes up at once; a directory's entries do
    # not while its .dir listing is on the remote: DVC takes the listing as proof of every entry (so status
    # says "in sync"). Deleting the listing from the remote makes the next push check, and send, the entries.
    a = published.a
    dvc("remote", "add", "--local", "damaged", str(damaged), cwd=a)
    proc = dvc("push", "-r", "damaged", "models/original/checkpoint.pt", "data/prepared", cwd=a)
    assert "1 file pushed" in proc.stdout, proc.stdout
    status = dvc("status", "--cloud", "-r", "damaged", "data/prepared", cwd=a).stdout
    assert "Cache and remote 'damaged' are in sync." in status, status
    listing = yaml.safe_load((a / "dvc.lock").read_text())["stages"]["download"]["outs"][0]["md5"]
    (damaged / "files" / "md5" / listing[:2] / listing[2:]).unlink()
    proc = dvc("push", "-r", "damaged", "data/prepared", cwd=a)
    assert "2 files pushed" in proc.stdout, proc.stdout  # the lost entry and the listing
    dvc("pull", "-r", "damaged", cwd=c)
    assert results(c) == published.results


def test_push_killed_midway_completes_when_run_again(sshd: SSHServer, from_nas: Path, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    add_ssh_remote(from_nas, "fresh", store, sshd)
    local = stored_objects(from_nas / ".dvc" / "cache")

    push = subprocess.Popen(
        [str(BIN / "dvc"), "push", "-r", "fresh", "-j", "1"],
        cwd=from_nas,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while push.poll() is None and not stored_objects(store) and time.monotonic() < deadline:
        time.sleep(0.002)
    push.send_signal(signal.SIGKILL)  # no chance to clean up, as with a power cut or a lost session
    output = push.communicate()[0]
    assert push.returncode == -signal.SIGKILL, f"dvc push ended on its own before the kill:\n{output}"
    landed = stored_objects(store)
    assert 0 < len(landed) < len(local), f"{len(landed)} of {len(local)} objects on the remote after the kill"

    proc = dvc("push", "-r", "fresh", cwd=from_nas)
    assert f"{len(local) - len(landed)} files pushed" in proc.stdout, proc.stdout  # only what was missing
    status = dvc("status", "--cloud", "-r", "fresh", cwd=from_nas).stdout
    assert "Cache and remote 'fresh' are in sync." in status, status
    assert stored_objects(store) == local
    assert all(rel.replace("/", "").removesuffix(".dir") == md5 for rel, md5 in local.items())  # content = name


def test_an_experiment_travels_with_its_checkpoints(sshd: SSHServer, over_ssh: Published, tmp_path):
    a = over_ssh.a
    # only the stage that makes new checkpoints: the evaluation stages after it would add a minute, not coverage
    proc = dvc("exp", "run", "-n", "freq02", "-S", "improved.lambda_freq=0.2", "pretrain@improved", cwd=a)
    assert ran_stages(proc.stdout + proc.stderr) == {
        "recipe_needs@improved",
        "pretrain@improved",
    }  # it, and what it reads
    experiment = results(a)
    assert experiment["models/improved/checkpoint.pt"] != over_ssh.results["models/improved/checkpoint.pt"]
    dvc("exp", "push", "origin", "freq02", cwd=a)

    b = clone(over_ssh, tmp_path / "b")
    ssh_credentials(b, "team", sshd)
    dvc("exp", "pull", "origin", "freq02", cwd=b)
    rows = csv.DictReader(io.StringIO(dvc("exp", "show", "--csv", cwd=b).stdout))
    row = next((r for r in rows if r["Experiment"] == "freq02"), None)
    assert row is not None, "freq02 missing from `dvc exp show` in the clone"
    assert float(row["improved.lambda_freq"]) == 0.2
    a_mse = json.loads((a / "metrics" / "pretrain" / "improved" / "metrics.json").read_text())["final"]["mse"]
    # DVC names a metric column by its key, prefixed with its file where two files share the key
    [column] = [c for c in row if c.endswith("final.mse") and "pretrain/original" not in c]
    assert float(row[column]) == pytest.approx(a_mse)

    dvc("exp", "apply", "freq02", cwd=b)  # its checkpoints came with `exp pull`: nothing left to run
    proc = dvc("repro", "pretrain@improved", cwd=b)
    assert ran_stages(proc.stdout + proc.stderr) == set(), proc.stdout
    assert results(b) == experiment
