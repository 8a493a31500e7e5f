"""What to run when a cache shard is missing or corrupt: commands that end in a verified cache.

The project's DVC config copies outputs out of DVC's cache (`cache.type = reflink,copy`), so damage to a workspace
shard leaves DVC's stored copy intact and a checkout restores it. A workspace checked out with hard links (an older
config, or a user's own) shares each shard's bytes with the stored copy, so the stored copy is damaged too, and
checkout would only bring the damage back: then the stored copy is named and deleted before the rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path


def _dvc_object_sharing(path: Path) -> Path | None:
    """The file in DVC's cache that is the same file as `path` (a hard link), if any."""
    try:
        stat = path.stat()
    except OSError:
        return None
    if stat.st_nlink < 2:
        return None
    try:
        from dvc.repo import Repo

        with Repo(str(path.parent), uninitialized=False) as repo:
            objects = Path(repo.cache.local.path)
    except Exception:  # not inside a DVC repo, or DVC cannot read it: nothing more to name
        return None
    for root, _, files in os.walk(objects):
        for name in files:
            candidate = Path(root) / name
            try:
                other = candidate.stat()
            except OSError:
                continue
            if (other.st_ino, other.st_dev) == (stat.st_ino, stat.st_dev):
                return candidate
    return None


def remedy(shard: Path, cache_dir: Path) -> str:
    """Commands that restore a verified cache after `shard` was found damaged or missing."""
    linked = _dvc_object_sharing(shard)
    if linked is not None:
        return (
            f"this shard is hard-linked to DVC's stored copy {linked}, which is damaged too; delete both and rebuild: "
            f"`rm -f {linked} && rm -rf {cache_dir} && dvc repro -s -f extract` (or, for a cache pushed to a remote, "
            f"`rm -f {linked} && rm -rf {cache_dir} && dvc pull {cache_dir}`)"
        )
    return (
        f"restore DVC's stored copy: `rm -rf {cache_dir} && dvc checkout {cache_dir}` (or `dvc pull {cache_dir}` "
        "from a remote); if DVC has no copy, rebuild it: `dvc repro -s -f extract`"
    )
