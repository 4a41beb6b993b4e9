"""Reading user data from a local path or s3:// (pyarrow's filesystems).

S3 takes the usual AWS settings from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION) and AWS_ENDPOINT_URL for an S3-compatible server such as MinIO.
"""

import os
from urllib.parse import urlparse

import pyarrow.fs

from gentrain.errors import GentrainError


def filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem holding `uri` and the path inside it."""
    if not uri.startswith("s3://"):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(uri)
    parsed = urlparse(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    options = {
        "region": os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    }
    if endpoint:
        endpoint_url = urlparse(endpoint)
        options["endpoint_override"] = endpoint_url.netloc or endpoint
        options["scheme"] = endpoint_url.scheme or "https"
    return pyarrow.fs.S3FileSystem(**options), parsed.netloc + parsed.path


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except (OSError, pyarrow.ArrowException) as err:
        raise GentrainError(f"{uri}: cannot read: {_first_line(err)}") from None


def list_files(uri: str, suffixes: tuple[str, ...]) -> list[str]:
    """The files under directory `uri` (recursively) ending in one of `suffixes`, sorted, as
    URIs of the same kind as `uri`."""
    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    except (OSError, pyarrow.ArrowException) as err:
        raise GentrainError(f"{uri}: cannot list: {_first_line(err)}") from None
    prefix = "s3://" if uri.startswith("s3://") else ""
    return sorted(
        prefix + info.path
        for info in infos
        if info.type == pyarrow.fs.FileType.File and info.path.lower().endswith(suffixes)
    )


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
