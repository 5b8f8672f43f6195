"""Publishing a model directory on the Hugging Face Hub (`scripts/publish_model.py --push`, `train.push_to_hub`).

    check_can_push("me/wav2vec2-demo")                    # at start-up: offline or not logged in fails at once
    url = push_model("runs/demo/model", "me/wav2vec2-demo")  # weights, processor, LM, card: one commit

The whole directory goes up as one commit (`HfApi.upload_folder`), so the hub copy is the directory
`transformers.pipeline` and `Wav2Vec2ProcessorWithLM` already load locally: weights, processor files,
normalizer.json, the KenLM directory (alphabet.json, language_model/, decoder.json) and the model card.
Hidden files (interrupted writes, locks) stay behind. Offline (`HF_HUB_OFFLINE=1`) the push fails at
once with a one-line error: it is never skipped silently.
"""

from __future__ import annotations

import os
from pathlib import Path

IGNORED = [".*", "**/.*", "*.tmp*"]  # interrupted writes and locks never go up


class HubError(RuntimeError):
    """A push that failed (network, the hub refused); the message is one line naming the fix."""


class HubSetupError(HubError):
    """A push that cannot start: offline mode, a malformed repo id, not a model directory."""


def check_can_push(repo_id: str) -> None:
    """Refuses, before any work, a push that cannot succeed here: offline mode, or a malformed repo id.

    Raises:
        HubSetupError: one line naming HF_HUB_OFFLINE, or the expected `owner/name` form.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if constants.HF_HUB_OFFLINE:
        raise HubSetupError(f"pushing to {repo_id} needs the network but HF_HUB_OFFLINE=1 is set; unset HF_HUB_OFFLINE "
                       "(and log in with `hf auth login` or HF_TOKEN), or do not push")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubSetupError(f"{repo_id!r} is not a hub repo id ({e}); use owner/name, e.g. me/wav2vec2-demo") from e
    if repo_id.count("/") != 1:
        raise HubSetupError(f"{repo_id!r} is not a hub repo id; use owner/name, e.g. me/wav2vec2-demo")


def push_model(directory: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
               message: str | None = None) -> str:
    """Uploads a model directory (with its LM and card) to `repo_id`, creating the repo if needed.

    Args:
        directory: A model directory written by training, build_lm or publish_model (config.json inside).
        repo_id: `owner/name` on the hub.
        private: create the repo private (an existing repo keeps its visibility).
        token: a hub token; None uses the login (`hf auth login`) or HF_TOKEN.
        message: the commit message (default names the directory).

    Returns:
        The URL of the commit.

    Raises:
        HubSetupError: offline, or not a model directory.
        HubError: not logged in, no network, or the hub refused.
    """
    import httpx2  # huggingface_hub's HTTP client (pinned with it): its transport errors are not OSErrors
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    check_can_push(repo_id)
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise HubSetupError(f"{directory} is not a model directory (no config.json); push the model/ of a training run "
                       "or the output of scripts/publish_model.py")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model",
                                   ignore_patterns=IGNORED,
                                   commit_message=message or f"Upload {directory.name} (wav2vec2-style CTC + KenLM)")
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        hint = ("log in with `hf auth login` or set HF_TOKEN to a token with write access"
                if status in (401, 403) else "check the repo id and your access to it")
        raise HubError(f"the hub refused the push to {repo_id} (HTTP {status}): {hint}") from e
    except (httpx2.TransportError, OSError) as e:  # refused, unreachable, timed out
        raise HubError(f"could not reach the hub to push to {repo_id} ({type(e).__name__}); check the network "
                       "or HF_ENDPOINT, then run the push again") from e
    return str(commit.commit_url if hasattr(commit, "commit_url") else commit)
