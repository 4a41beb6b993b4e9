"""Files at a local path or s3:// (pyarrow's filesystems): user data, and the bucket behind
storage.path. Outside the data package, so that the commands that only check a bucket never
import torch.

S3 takes the usual AWS settings from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION) and AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for an S3-compatible server such as MinIO.
"""

import os
from collections.abc import Sequence
from urllib.parse import urlparse

import pyarrow.fs

from gentrain.errors import GentrainError, SpecError, first_line


def filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem holding `uri` and the path inside it."""
    if not uri.startswith("s3://"):
        return pyarrow.fs.LocalFileSystem(), _inner_path(uri)
    # pyarrow does not read AWS_ENDPOINT_URL itself: without it, it would go to AWS
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options = {
        "region": os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    }
    if endpoint:
        url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = url.netloc
        options["scheme"] = url.scheme
    return pyarrow.fs.S3FileSystem(**options), _inner_path(uri)


def read_bytes(uri: str) -> bytes:
    return read_files([uri])[0]


def read_files(uris: Sequence[str]) -> list[bytes]:
    """The contents of `uris`, all local or all on S3, through one filesystem (making an S3 client
    takes ~0.1 s: one per file would dominate reading a folder of small images)."""
    if not uris:
        return []
    fs, _ = filesystem(uris[0])
    contents = []
    for uri in uris:
        try:
            with fs.open_input_stream(_inner_path(uri)) as stream:
                contents.append(stream.read())
        except (OSError, pyarrow.ArrowException) as err:
            raise GentrainError(f"{uri}: cannot read: {first_line(err)}") from None
    return contents


def read_range(uri: str, start: int, length: int) -> bytes:
    """`length` bytes of `uri` from byte `start` (one ranged request on S3)."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_file(path) as file:
            return file.read_at(length, start)
    except (OSError, pyarrow.ArrowException) as err:
        raise GentrainError(f"{uri}: cannot read: {first_line(err)}") from None


def file_sizes(uri: str, suffixes: tuple[str, ...]) -> list[tuple[str, int]]:
    """(file, size in bytes) of file `uri`, of the files under directory `uri` (recursively)
    ending in one of `suffixes`, or of the files a glob (`data/*.parquet`, `**` for any depth)
    matches, sorted, as URIs of the same kind as `uri`: metadata only."""
    if any(char in uri for char in "*?"):
        return _glob(uri)
    fs, path = filesystem(uri)
    prefix = "s3://" if uri.startswith("s3://") else ""
    try:
        info = fs.get_file_info(path)
        if info.type == pyarrow.fs.FileType.File:
            return [(uri, info.size)]
        if info.type == pyarrow.fs.FileType.NotFound and not uri.endswith("/"):
            raise GentrainError(f"{uri}: cannot read: no such file or directory")
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    except (OSError, pyarrow.ArrowException) as err:
        raise GentrainError(f"{uri}: cannot list: {first_line(err)}") from None
    return sorted(
        (prefix + info.path, info.size)
        for info in infos
        if info.type == pyarrow.fs.FileType.File and info.path.lower().endswith(suffixes)
    )


def _glob(pattern: str) -> list[tuple[str, int]]:
    """The files matching `pattern` (`*` within a folder, `**` across folders, `?` one
    character), listed from the folder before its first wildcard."""
    import re

    base = pattern[: min(pattern.index(c) for c in "*?" if c in pattern)].rsplit("/", 1)[0]
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    wild = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    matcher = re.compile("".join(wild.get(part, re.escape(part)) for part in parts))
    return [item for item in file_sizes(base, ("",)) if matcher.fullmatch(item[0])]


def check_bucket(uri: str, field: str) -> None:
    """Fail before anything starts when the bucket of s3:// `uri` is missing or refuses these
    credentials (a job would otherwise train until its first checkpoint and die there)."""
    if not uri.startswith("s3://"):
        return
    fs, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    where = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    try:
        found = fs.get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
    except (OSError, pyarrow.ArrowException) as err:
        message = str(err)
        if any(code in message for code in ("ACCESS_DENIED", "InvalidAccessKeyId", "Signature")):
            raise GentrainError(
                f"{field}: S3 at {where} refused access to bucket '{bucket}': check the "
                "credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            ) from None
        raise GentrainError(f"{field}: cannot reach S3 at {where}: {first_line(err)}") from None
    if not found:
        raise SpecError(f"{field}: bucket '{bucket}' does not exist at {where}; create it first")


def check_exists(uri: str, field: str) -> None:
    """Fail before anything starts when s3:// `uri` (an object, or a prefix with objects under
    it) or its bucket is not there."""
    check_bucket(uri, field)
    fs, path = filesystem(uri)
    try:
        found = fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    except (OSError, pyarrow.ArrowException) as err:
        raise GentrainError(f"{field}: cannot reach {uri}: {first_line(err)}") from None
    if not found:
        raise SpecError(f"{field}: {uri} does not exist")


def _inner_path(uri: str) -> str:
    """`bucket/key` for s3:// (taken as is: keys may hold '#' or '?'), else an absolute path."""
    return uri.removeprefix("s3://") if uri.startswith("s3://") else os.path.abspath(uri)
