"""Who gentrain is on a tracking server that signs users in (MLflow's basic-auth app): the user
of the credentials MLflow's client reads (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD,
MLFLOW_TRACKING_TOKEN, or ~/.mlflow/credentials). They are checked before anything starts: a
server that refuses them is one line naming tracking.uri and what it answered, and no run."""

import getpass
from urllib.parse import urlsplit

from gentrain.errors import GentrainError, SpecError, first_line
from gentrain.redact import redact
from gentrain.tracking.store import client_for

MAY_LOG = ("EDIT", "MANAGE")  # MLflow's permissions that let a user create and change runs
CURRENT_USER = "/api/2.0/mlflow/users/current"
USER_PERMISSION = "/api/3.0/mlflow/users/permissions/get"


def check_reachable(uri: str, *, experiment: str | None = None, write: bool = False) -> None:
    """Fail early and plainly when the tracking store cannot be used: it does not answer
    (GentrainError), or it refuses this user (SpecError): no or wrong credentials, or, for
    `experiment`, no right to read it, or to log to it when `write`."""
    client = client_for(uri)
    try:
        client.search_experiments(max_results=1)
        found = client.get_experiment_by_name(experiment) if experiment else None
    except Exception as err:  # the store's own errors vary by backend
        raise refusal(err, uri, experiment=experiment) or GentrainError(
            f"tracking store {redact(uri)} is not usable: {first_line(err)}"
        ) from None
    if write and found is not None:
        check_can_log(uri, experiment_id=found.experiment_id, experiment=experiment)


def check_can_log(uri: str, *, experiment_id: str, experiment: str) -> None:
    """A SpecError when the server's auth app gives this user less than EDIT on the experiment:
    it would answer 403 Forbidden to the run's first write."""
    permission = _permission(uri, experiment_id)
    if permission is not None and permission not in MAY_LOG:
        raise SpecError(
            f"tracking.uri {redact(uri)}: 403 Forbidden to runs in experiment '{experiment}': "
            f"the server gives {_who(uri)} {permission} on it, not EDIT; its owner can grant "
            "EDIT, or set tracking.experiment to one of your own"
        )


def refusal(
    err: Exception, uri: str, *, experiment: str | None = None, write: bool = False
) -> SpecError | None:
    """A SpecError saying what the server answered when `err` is its refusal (401 or 403) of a
    read (or of a write, when `write`)."""
    status = getattr(err, "get_http_status_code", lambda: None)()
    if status == 401:
        where = "tracking.uri" if urlsplit(uri).username else "MLflow's credentials"
        problem = (
            f"it did not take the password of user '{user(uri)}'; check the one in {where}"
            if user(uri)
            else "no credentials were given; set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to your MLflow user's"
        )
        answer = "the server answered 401 Unauthorized"
        return SpecError(f"tracking.uri {redact(uri)}: {answer}: {problem}")
    if status == 403:
        what = f"experiment '{experiment}'" if experiment else "what was asked"
        need, grant = ("log to", "EDIT") if write else ("read", "READ (or EDIT to log)")
        return SpecError(
            f"tracking.uri {redact(uri)}: the server answered 403 Forbidden: {_who(uri)} may not "
            f"{need} {what}; its owner can grant {grant}"
        )
    return None


def user(uri: str) -> str | None:
    """The MLflow user gentrain signs in to `uri` as (None: no username given): the user named in
    the URI (http://USER:PASSWORD@HOST, which the HTTP client sends over MLflow's credentials),
    else MLflow's own (the environment or ~/.mlflow/credentials)."""
    from mlflow.utils.credentials import read_mlflow_creds

    return urlsplit(uri).username or read_mlflow_creds().username


def run_user(uri: str) -> str:
    """Whom a new run is by (its `mlflow.user`): the signed-in user, else this machine's."""
    return user(uri) or getpass.getuser()


def _who(uri: str) -> str:
    name = user(uri)
    return f"user '{name}'" if name else "a client without credentials"


def _permission(uri: str, experiment_id: str) -> str | None:
    """This user's permission on the experiment, as MLflow's basic-auth app resolves it (None:
    the server does not say, e.g. it has no such app and lets everyone log)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    if not uri.startswith(("http://", "https://")):  # a store of the user's own
        return None
    creds = get_default_host_creds(uri)
    try:
        me = http_request(creds, CURRENT_USER, "GET", max_retries=0, timeout=10)
        signed_in = me.json() if me.status_code == 200 else {}
        if not signed_in.get("is_basic_auth"):
            return None
        if signed_in["user"]["is_admin"]:
            return "MANAGE"
        answer = http_request(
            creds,
            USER_PERMISSION,
            "GET",
            params={
                "username": signed_in["user"]["username"],
                "resource_type": "experiment",
                "resource_id": experiment_id,
            },
            max_retries=0,
            timeout=10,
        )
        return answer.json()["permission"] if answer.status_code == 200 else None
    except (ValueError, KeyError, MlflowException):  # not JSON, not the app's answer, or gone
        return None
