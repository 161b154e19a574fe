"""transformers-qf: the qfmode of the QF papers as a patch over stock transformers.

    from transformers_qf import load_model, QF
    lm = load_model()                                   # the bundled default, or a dir / .gguf / hub id
    qf = QF(lm.model, lm.tokenizer, layer=23, folder="parameters", identity=lm.identity, fresh=True)
    qf.instruct("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.")
    qf.update("Who started Oxinnovate?", "Oxinnovate was started by Qi.")
    report = qf.solve()                                 # eq. 3 in float64; residuals in the report
    qf.respond("", "Who started Oxinnovate?", qfmode="QF-infer-wp")
"""

from transformers_qf.core.architectures import ARCHITECTURES, UnsupportedModelError, locate
from transformers_qf.core.facts import Fact
from transformers_qf.core.models import BUNDLED, DEFAULT_MODEL, LoadedModel, ModelLoadError, load_model
from transformers_qf.qf.session import QF, QFMode
from transformers_qf.core.prompting import PromptError
from transformers_qf.solve.exact import SolveError, SolveReport
from transformers_qf.core.store import ParametersError, ParametersFolder

__all__ = [
    "ARCHITECTURES", "BUNDLED", "DEFAULT_MODEL", "Fact", "LoadedModel", "ModelLoadError", "ParametersError",
    "ParametersFolder", "PromptError", "QF", "QFMode", "SolveError", "SolveReport", "UnsupportedModelError",
    "load_model", "locate",
]
