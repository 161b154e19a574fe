"""transformers-qf: the qfmode of the QF papers as a patch over stock transformers.

    from transformers_qf import load_model, QF
    lm = load_model()                                   # the bundled default, or a dir / .gguf / hub id
    qf = QF(lm.model, lm.tokenizer, layer=23, folder="parameters", identity=lm.identity, fresh=True)
    qf.instruct("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.")
    qf.update("Who started Oxinnovate?", "Oxinnovate was started by Qi.")
    report = qf.solve()                                 # eq. 3 in float64; residuals in the report
    qf.respond("", "Who started Oxinnovate?", qfmode="QF-infer-wp")
"""

from .architectures import ARCHITECTURES, UnsupportedModelError, locate
from .models import BUNDLED, DEFAULT_MODEL, LoadedModel, ModelLoadError, load_model
from .modes import QF, QFMode
from .prompting import PromptError
from .qf import SolveError, SolveReport, solve
from .store import ParametersError, ParametersFolder

__all__ = [
    "ARCHITECTURES", "BUNDLED", "DEFAULT_MODEL", "LoadedModel", "ModelLoadError", "ParametersError",
    "ParametersFolder", "PromptError", "QF", "QFMode", "SolveError", "SolveReport", "UnsupportedModelError",
    "load_model", "locate", "solve",
]
