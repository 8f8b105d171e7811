"""What a ``submit_job`` call asks for, checked before any work: the image, the model (named, or
the default one), and no Celery workflow options inferq cannot honour.

inferq's workers write each result straight into the backend from a batch; they do not send the
signatures of ``link=``, ``link_error=``, chains or chords afterwards. Such a call is refused
here with a typed error rather than accepted and its follow-up silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from inferq.shared.errors import InvalidInput

#: Celery's options that attach follow-up work to a task (``chain``/``chord`` come from canvas).
WORKFLOW_OPTIONS = ("link", "link_error", "chain", "chord")

_USAGE = "submit_job.delay(img, model='NAME')"


def split_call(
    args: Sequence[Any] | None,
    kwargs: dict[str, Any] | None,
    default_model: Callable[[], str],
) -> tuple[Any, dict[str, Any]]:
    """The image and the call's keyword arguments, ``model`` filled in by ``default_model``
    when the call names none."""
    rest = list(args or ())
    call = dict(kwargs or {})
    if "img" in call:
        img = call.pop("img")
    elif rest:
        img = rest.pop(0)
    else:
        raise InvalidInput(f"submit_job needs an image: {_USAGE}, got no positional argument")
    if rest:
        call.setdefault("model", rest.pop(0))
    if call.get("model") is None:
        call["model"] = default_model()
    return img, call


def default_model(configured: str, published: Callable[[], list[str]]) -> str:
    """``INFERQ_DEFAULT_MODEL`` if set, else the only published model; an error listing the
    published ones when there are several or none."""
    if configured:
        return configured
    names = published()
    if len(names) == 1:
        return names[0]
    found = f"the published models {names}" if names else "no published model"
    raise InvalidInput(
        f"submit_job needs model= ({_USAGE}) or INFERQ_DEFAULT_MODEL when more or fewer than "
        f"one model is published, got {found}"
    )


def refuse_workflow(options: dict[str, Any]) -> None:
    """Raise InvalidInput if the call carries callbacks, a chain or a chord."""
    given = [name for name in WORKFLOW_OPTIONS if options.get(name)]
    if given:
        raise InvalidInput(
            "submit_job takes no link=, link_error=, chain or chord: inferq's workers store "
            f"results without running follow-up tasks, got {', '.join(given)}; wait on the "
            "result (AsyncResult.get or inferq.gather) and call the next task yourself"
        )
