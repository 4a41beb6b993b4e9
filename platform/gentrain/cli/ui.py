"""`gentrain ui`: the MLflow UI on the configured store."""

import os
import sys
from typing import Annotated

import typer

from gentrain.cli.common import app, err, fail, fault, out
from gentrain.errors import GentrainError, SpecError
from gentrain.redact import redact


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it.")] = "127.0.0.1",
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Serve beyond loopback with no sign-in.")
    ] = False,
) -> None:
    """Open the MLflow UI on the configured store (127.0.0.1 unless --host). With
    MLFLOW_AUTH_CONFIG_PATH (MLflow's basic-auth config) it asks for a user and password."""
    from gentrain import tracking

    try:
        uri = tracking.resolve_tracking_uri()
        if uri.startswith(("http://", "https://")):
            out.print(f"the tracking server serves its own UI: {redact(uri)}", markup=False)
            return
        sign_in = tracking.ui_sign_in(host, insecure=insecure)
        tracking.check_reachable(uri)  # a new local store is made here, never by two at once
    except SpecError as error:
        fail(str(error), 2)
    except GentrainError as error:
        fault(error)
    argv, env = tracking.ui_command(uri, host=host, port=port, sign_in=sign_in)
    if sign_in:
        shown = "sign-in required: MLflow's basic-auth app, MLFLOW_AUTH_CONFIG_PATH"
    elif tracking.is_loopback(host):
        shown = "no sign-in: your local store, reachable from this machine only"
    else:
        shown = "no sign-in: --insecure"
        err.print(
            f"warning: the MLflow UI listens on {host} without sign-in: anyone who reaches it "
            "can read and delete your runs",
            markup=False,
        )
    out.print(f"MLflow UI on http://{host}:{port} ({shown}; Ctrl-C stops it)", markup=False)
    sys.stdout.flush()
    os.execve(argv[0], argv, env)
