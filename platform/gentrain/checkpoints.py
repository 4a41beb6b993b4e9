"""A checkpoint is loaded only whole. Each rank seals the part it writes with a manifest (every
file's size and SHA-256); Ray Train commits a checkpoint once every rank has reported its part,
and loading verifies every rank's manifest. A checkpoint that fails verification (a torn upload,
a file damaged in storage) gives way to the newest whole one before it. A restart looks in the
run's directory itself: Ray Train may not have registered the newest checkpoint there."""

import hashlib
import json
import logging
from pathlib import Path

from ray.train import Checkpoint

MANIFEST = "manifest_rank{rank}.json"
STATE = "state.json"  # rank 0's: the step, the MLflow run and how many ranks saved

log = logging.getLogger(__name__)


def seal(directory: Path, *, rank: int) -> None:
    """Write this rank's manifest of the files it put in `directory` (call it last)."""
    files = {
        path.relative_to(directory).as_posix(): _fingerprint(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
    (directory / MANIFEST.format(rank=rank)).write_text(json.dumps(files, sort_keys=True))


def problem(directory: Path) -> str | None:
    """Why the checkpoint in `directory` cannot be loaded, or None when it is whole."""
    try:
        world = json.loads((directory / STATE).read_text())["world"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{STATE} is missing or unreadable"
    for rank in range(world):
        try:
            files = json.loads((directory / MANIFEST.format(rank=rank)).read_text())
        except (OSError, ValueError):
            return f"rank {rank}'s manifest is missing or unreadable"
        for name, expected in files.items():
            path = directory / name
            if not path.is_file():
                return f"{name} is missing"
            if _fingerprint(path) != expected:
                return f"{name} is not the file that was saved (size or SHA-256 differs)"
    return None


def newest_of_run(handed: Checkpoint | None, filesystem, run_path: str) -> Checkpoint | None:
    """`handed` (Ray's latest registered checkpoint of the run), or a newer one in the run's
    directory that Ray has not registered."""
    newest = next(iter(_checkpoint_paths(filesystem, run_path)), None)
    if newest is None or (handed and _name(handed.path) >= _name(newest)):
        return handed
    return Checkpoint(newest, filesystem=filesystem)


def newest_whole(latest: Checkpoint) -> tuple[Checkpoint | None, list[str]]:
    """`latest` if it is whole, else the newest whole checkpoint saved before it in the same run
    directory (None if there is none), with one line for each checkpoint passed over."""
    skipped = []
    for path in _latest_then_earlier(latest):
        checkpoint = Checkpoint(path, filesystem=latest.filesystem)
        with checkpoint.as_directory() as local:
            reason = problem(Path(local))
        if reason is None:
            return checkpoint, skipped
        skipped.append(f"{_name(path)}: {reason}")
        log.warning("gentrain: not loading checkpoint %s: %s", path, reason)
    return None, skipped


def newest_state(storage: str, run_id: str) -> dict | None:
    """The state (step, data position and fingerprint) of run `run_id`'s newest checkpoint under
    `storage` (storage.path, local or s3://), or None when it has none."""
    from gentrain.storage import filesystem

    fs, root = filesystem(storage)
    for path in _checkpoint_paths(fs, f"{root.rstrip('/')}/{run_id}"):
        try:
            with fs.open_input_stream(f"{path}/{STATE}") as stream:
                return json.loads(stream.read())
        except (OSError, ValueError):
            continue  # a torn checkpoint: the run resumes from an earlier one
    return None


def _latest_then_earlier(latest: Checkpoint):
    """`latest`'s path, then (listed only if asked for: a listing is a request on S3) the run's
    checkpoints saved before it, newest first."""
    yield latest.path
    parent, name = latest.path.rsplit("/", 1)
    yield from (path for path in _checkpoint_paths(latest.filesystem, parent) if _name(path) < name)


def _checkpoint_paths(filesystem, run_path: str) -> list[str]:
    """The checkpoint directories in a run's directory, newest first (Ray Train names them
    checkpoint_<date and time>)."""
    from pyarrow import fs as pafs

    found = filesystem.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    paths = [
        info.path
        for info in found
        if info.type == pafs.FileType.Directory and _name(info.path).startswith("checkpoint_")
    ]
    return sorted(paths, key=_name, reverse=True)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _fingerprint(path: Path) -> dict[str, int | str]:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}
