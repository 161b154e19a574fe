"""The bundled models' own chat templates give the paper's raw ChatML byte for byte (tokenizers only, no model
load). Marked `integration`."""

import pytest
import torch

from transformers_qf.core import prompting

pytestmark = pytest.mark.integration

FACT = ("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.")


@pytest.fixture(scope="module", params=["qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"])
def bundled_tokenizer(request):
    from transformers import AutoTokenizer

    from transformers_qf.core.models import BUNDLED, ensure_converted

    return AutoTokenizer.from_pretrained(str(ensure_converted(BUNDLED[request.param], progress=False)))


def _render(tok, messages, add_generation_prompt=False):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def test_the_template_is_raw_chatml_when_a_system_turn_is_given(bundled_tokenizer):
    tok = bundled_tokenizer
    assert tok.chat_template
    assert prompting.chat_format(tok) == prompting.CHATML
    for system in (FACT[0], ""):
        turns = [{"role": "system", "content": system}, {"role": "user", "content": FACT[1]}]
        assert _render(tok, turns) == prompting.chatml_prompt(system, FACT[1])
        assert _render(tok, turns, True) == prompting.generation_prompt(system, FACT[1])
        assert _render(tok, turns + [{"role": "assistant", "content": FACT[2]}]) == \
            prompting.chatml_prompt(system, FACT[1]) + prompting.ANSWER_HEADER + FACT[2] + prompting.ANSWER_CLOSING
    # with no system turn the template writes a default system prompt of its own: QF always gives one
    assert _render(tok, [{"role": "user", "content": FACT[1]}]) != prompting.chatml_prompt("", FACT[1])


def test_the_recorded_rows_are_those_of_raw_chatml(bundled_tokenizer):
    import copy

    raw = copy.deepcopy(bundled_tokenizer)
    raw.chat_template = None
    assert prompting.chat_format(raw) is prompting.CHATML
    for system in (FACT[0], ""):
        templated, chatml = (prompting.teacher_forced(tok, system, *FACT[1:], [0, 1, 1, 1, 1])
                             for tok in (bundled_tokenizer, raw))
        for field in ("input_ids", "kept", "weights", "targets"):
            assert torch.equal(getattr(templated, field), getattr(chatml, field)), field
        assert bundled_tokenizer.decode(chatml.input_ids) == prompting.CHATML.conversation(system, *FACT[1:])
        header = prompting.header_rows(bundled_tokenizer)
        assert bundled_tokenizer.decode(templated.targets[:header]) == "assistant\n"
        assert bundled_tokenizer.decode(templated.targets[header:-1]) == FACT[2]
