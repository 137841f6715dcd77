"""The order in which a stopping server lets its models go, so that no request it took fails.

tritonserver's own stop (SIGTERM) makes every model's scheduler refuse new requests at once
and then waits for the requests in flight. A request that travels through several models
is new at each of them: an ensemble whose first step (decoding the image) is running at
SIGTERM gets its second step (the encoder) refused ("Server is stopping, scheduler for
model has stopped accepting new inference requests"), and so does a BLS call of the
segmentation model (seen in CI on `clip_image`; Triton core's dynamic batch scheduler
refuses every enqueue after ``Stop()``, and the ensemble scheduler's ``Stop()`` does
nothing).

So before the signal the launcher unloads the models whose work reaches other models,
callers first: Triton then refuses new requests to them ("has no available versions",
which the client reads as the server going away) while each one in flight keeps its model
alive until its last step has answered; the model's state turns from UNLOADING to
UNAVAILABLE only then. The models they call stay loaded meanwhile, and once only
single-step models are left, tritonserver's own stop finishes their requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Parameters through which a Python-backend model names the models it calls (BLS): the
# segmentation model's text and image models.
CALL_PARAMETER_SUFFIX = "_model"


def calls(configs: Mapping[str, object]) -> dict[str, set[str]]:
    """For each model (name -> ``model_config_pb2.ModelConfig``), the loaded models it sends
    requests to while it answers: its ensemble steps, and models its parameters name."""
    found: dict[str, set[str]] = {}
    for name, config in configs.items():
        steps = {step.model_name for step in config.ensemble_scheduling.step}  # type: ignore[attr-defined]
        named = {
            value.string_value
            for key, value in config.parameters.items()  # type: ignore[attr-defined]
            if key.endswith(CALL_PARAMETER_SUFFIX)
        }
        found[name] = (steps | named) & set(configs) - {name}
    return found


def waves(called: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The models that call others, in unloading order: each wave holds those that no model
    still loaded calls. Models that call nobody are left to tritonserver's own stop."""
    remaining = {name: set(targets) for name, targets in called.items() if targets}
    order: list[list[str]] = []
    while remaining:
        reached = set().union(*remaining.values())
        wave = sorted(name for name in remaining if name not in reached)
        if not wave:  # a cycle, which Triton itself would refuse to load: stop ordering
            wave = sorted(remaining)
        order.append(wave)
        for name in wave:
            del remaining[name]
    return order
