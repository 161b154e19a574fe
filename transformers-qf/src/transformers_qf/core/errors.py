"""The errors that mean "bad input": scripts print their one-line message instead of a traceback."""

from transformers_qf.core.architectures import UnsupportedModelError
from transformers_qf.core.models import ModelLoadError
from transformers_qf.core.prompting import PromptError
from transformers_qf.core.store import ParametersError


class SolveError(ValueError):
    """Rows that cannot be solved (mismatched counts, non-finite values)."""


USER_ERRORS = (ModelLoadError, UnsupportedModelError, ParametersError, PromptError, SolveError, FloatingPointError)
