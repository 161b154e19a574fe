"""The errors that mean "bad input": scripts print their one-line message instead of a traceback."""

from .architectures import UnsupportedModelError
from .models import ModelLoadError
from .prompting import PromptError
from .qf import SolveError
from .store import ParametersError

USER_ERRORS = (ModelLoadError, UnsupportedModelError, ParametersError, PromptError, SolveError, FloatingPointError)
