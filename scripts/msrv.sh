#!/usr/bin/env bash
# Checks that the workspace's `rust-version` (Cargo.toml) is no lower than the highest
# `rust-version` any locked dependency declares. Clippy's `incompatible_msrv` lint (run by
# `make lint`) checks the other half: no std API in our own code newer than that version.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
def version(v):
    return tuple(int(x) for x in v.split("."))
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit(f"msrv: every member must inherit the workspace rust-version, found {sorted(map(str, ours))}")
ours = ours.pop()
deps = [(version(p["rust_version"]), p["name"], p["version"]) for p in meta["packages"]
        if p["id"] not in members and p.get("rust_version")]
need, name, ver = max(deps)
need_s = ".".join(map(str, need))
if version(ours) < need:
    sys.exit(f"msrv: rust-version {ours} is below {need_s}, which {name} {ver} needs")
print(f"msrv: rust-version {ours}; the highest a dependency needs is {need_s} ({name} {ver})")
'
