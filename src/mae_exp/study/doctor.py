"""`python -m mae_exp.study doctor`: what in this clone's DVC setup lets damage through silently, and the command
that fixes it. Quiet, exit 0, when nothing is wrong; one warning line per problem, exit 1, otherwise.

It checks that every configured DVC remote has `verify` on. Without it, `dvc pull` trusts what it
downloads: a corrupt object on the remote lands in DVC's cache and the workspace, and `dvc status` calls
it up to date (docs/team.md). Read through the `dvc config` CLI, level by level, so the fix names the
level (`--local`, `--project`, ...) where the remote is configured.
"""

from __future__ import annotations

import subprocess
import sys

from . import dvc_command

LEVELS = ("system", "global", "project", "local")  # DVC's precedence, lowest first
TRUE = ("true", "1", "yes", "on")


def remote_settings() -> dict[str, dict[str, tuple[str, str]]]:
    """{remote: {key: (value, level)}} with each key taken from the most specific level that sets it."""
    remotes: dict[str, dict[str, tuple[str, str]]] = {}
    for level in LEVELS:
        proc = subprocess.run([dvc_command(), "config", "--list", f"--{level}"], capture_output=True, text=True)
        if proc.returncode != 0:
            if level == "project" and "not inside a dvc repo" in (proc.stderr + proc.stdout).lower():
                print(
                    "error: not inside a DVC repository: run `python -m mae_exp.study doctor` from the repository root",
                    file=sys.stderr,
                )
                sys.exit(2)
            continue  # a level without a config file
        for line in proc.stdout.splitlines():
            key, _, value = line.partition("=")
            section, _, rest = key.partition(".")
            name, _, option = rest.rpartition(".")
            if section == "remote" and name:
                remotes.setdefault(name, {})[option] = (value.strip(), level)
    return remotes


def verify_warnings(remotes: dict[str, dict[str, tuple[str, str]]]) -> list[str]:
    lines = []
    for name, options in sorted(remotes.items()):
        value, level = options.get("verify", ("false", options.get("url", ("", "project"))[1]))
        if value.lower() in TRUE:
            continue
        url = options.get("url", ("?", ""))[0]
        lines.append(
            f"warning: DVC remote {name!r} ({url}) has verify off, so `dvc pull` trusts what it downloads "
            f"and a corrupt object reaches DVC's cache unnoticed: run `dvc remote modify --{level} {name} "
            f"verify true`"
        )
    return lines


def main() -> int:
    lines = verify_warnings(remote_settings())
    for line in lines:
        print(line)
    return 1 if lines else 0
