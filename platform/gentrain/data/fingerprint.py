"""What a checkpoint remembers of its data, from metadata alone: every file with its size (and
Parquet row counts), and the settings that turn rows into examples. A run resumed on data that
differs is refused, naming what changed."""

from __future__ import annotations

import hashlib
import json

from gentrain.data.sources import Source
from gentrain.spec_sections import DataSection

LISTED_FILES = 10_000  # more files are remembered by digest and count only


def fingerprint(source: Source, data: DataSection) -> dict:
    files = {path: list(entry) for path, entry in source.files().items()}  # as JSON has it
    settings = {"source": data.source, "column": data.column}
    if manifest := getattr(source, "manifest", None):  # prepared: what it was made with
        settings = {"source": data.source, "prepared_from": manifest["source"]["digest"]}
    elif source.modality == "text":
        settings |= {"tokenizer": data.tokenizer, "seq_len": data.seq_len}
        if data.tokenizer == "bpe":
            settings["vocab_size"] = data.vocab_size
    else:
        settings |= {"image_size": data.image_size, "channels": data.channels}
    digest = hashlib.sha256(json.dumps([files, settings], sort_keys=True).encode()).hexdigest()
    return {
        "digest": digest,
        "settings": settings,
        "files": files if len(files) <= LISTED_FILES else None,
        "count": len(files),
        "bytes": sum(size for size, _ in files.values()),
    }


def what_changed(saved: dict, now: dict) -> str | None:
    """One line naming how the data differs from the checkpoint's, or None when it does not."""
    if saved.get("digest") == now["digest"]:
        return None
    changes = [
        f"data.{key} was {saved['settings'].get(key)!r}, now {value!r}"
        for key, value in now["settings"].items()
        if key != "source" and saved["settings"].get(key) != value
    ]
    before, after = saved.get("files"), now["files"]
    if before is not None and after is not None:
        for label, names in (
            ("added", sorted(set(after) - set(before))),
            ("removed", sorted(set(before) - set(after))),
            ("changed", sorted(n for n in set(after) & set(before) if after[n] != before[n])),
        ):
            if names:
                more = f" and {len(names) - 1} more" if len(names) > 1 else ""
                changes.append(f"{label}: {names[0]}{more}")
    elif saved.get("count") != now["count"] or saved.get("bytes") != now["bytes"]:
        changes.append(
            f"{saved.get('count')} files of {saved.get('bytes')} bytes, now {now['count']} of "
            f"{now['bytes']}"
        )
    return "; ".join(changes) or "the files' sizes or row counts differ"
