"""``@task.glm``: a TaskFlow function that returns the prompt (or messages); GLM answers it.

The function receives upstream values as ordinary arguments and returns either a prompt string or
a list of messages; every other option is a :class:`GLMChatOperator` parameter given to the
decorator. The returned text is sent as it is: it is not rendered as a template again, so upstream
data containing ``{{ }}`` stays literal. With ``rows=``, the returned string is the per-row template.

Example::

    @task.glm(model="glm-4.5", request_params={"temperature": 0.2})
    def classify(ticket: dict) -> str:
        return f"Classify this ticket as bug, question or request: {ticket['text']}"
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory
from airflow.sdk.definitions.context import context_merge

from airflow_provider_glm.operators.chat import GLMChatOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["glm_task"]

_SET_DURING_EXECUTION = "(returned by the decorated function)"


def _call_kwargs(func: Callable[..., Any], args: Collection[Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The context entries ``func`` takes by name after ``args`` (all of them with ``**kwargs``), as
    TaskFlow passes them. Written here: Airflow 3.1's task SDK has no public helper for it."""
    parameters = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(context)
    positional = [n for n, p in parameters.items()
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    keyword_only = [n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    names = positional[len(args):] + keyword_only
    return {name: context[name] for name in names if name in context}


class _GLMDecoratedOperator(DecoratedOperator, GLMChatOperator):
    """Calls the decorated function for the prompt, then runs :class:`GLMChatOperator`."""

    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *GLMChatOperator.template_fields)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **GLMChatOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.glm"
    overwrite_rtif_after_execution: bool = True

    def __init__(self, *, python_callable: Callable[..., Any], op_args: Collection[Any] | None = None,
                 op_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        kwargs.pop("multiple_outputs", None)
        given = sorted(k for k in ("prompt", "messages") if k in kwargs)
        if given:
            raise TypeError(f"@task.glm takes the prompt from the function's return value; drop {given}")
        super().__init__(
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, multiple_outputs=False,
            prompt=_SET_DURING_EXECUTION, **kwargs,
        )

    def execute(self, context: Context) -> Any:
        context_merge(context, self.op_kwargs)
        kwargs = _call_kwargs(self.python_callable, self.op_args, context)
        result = self.python_callable(*self.op_args, **kwargs)
        if isinstance(result, str) and result.strip():
            self.prompt, self.messages = result, None
        elif isinstance(result, list) and result:
            self.prompt, self.messages = None, result
        else:
            raise TypeError(
                f"@task.glm function {self.python_callable.__name__} must return a non-empty prompt string "
                f"or a non-empty list of messages, got {type(result).__name__}"
            )
        return GLMChatOperator.execute(self, context)


def glm_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """Wrap a function returning a prompt or messages into a :class:`GLMChatOperator` task.

    :param python_callable: the decorated function.
    :param kwargs: :class:`GLMChatOperator` parameters.
    """
    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=_GLMDecoratedOperator, **kwargs
    )
