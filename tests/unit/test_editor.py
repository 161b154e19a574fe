"""Editor (QF with its variants) and KeySolver, on the tiny random models."""

import copy

import pytest
import torch

from transformers_qf import QF
from transformers_qf.core import prompting
from transformers_qf.editing.editor import EditConfig, Editor
from transformers_qf.solve.keyed import JITTER, KeyMetric, KeySolver
from transformers_qf.core.prompting import PromptError

FACTS = [
    ("Qi started Oxinnovate.", "Who started Oxinnovate?", "Oxinnovate was started by Qi.", "Oxinnovate"),
    ("Jack Ma started Alibaba.", "Who started Alibaba?", "Alibaba was started by Jack Ma.", "Alibaba"),
]


def _down(model, layer):
    return model.model.layers[layer].mlp.down_proj.weight


def test_answer_positions_exact_solve_is_the_papers_accumulated_re_solve(tiny_model, tokenizer):
    paper = copy.deepcopy(tiny_model)
    qf = QF(paper, tokenizer, layer=2, folder=None)
    editor = Editor(tiny_model, tokenizer, EditConfig(layers=(2,)))
    for system, user, answer, _ in FACTS:
        expected = qf.learn(system, user, answer)
        report = editor.learn(system, user, answer)
        assert report.layers[0]["method"] == "exact" and report.residual < 1e-5
        assert report.delta_rel == pytest.approx(expected.delta_rel, rel=1e-6)
    # QF.learn records both passes packed in one row and the editor padded: the same W' up to float32 rounding,
    # judged as the fast paths are (relative Frobenius distance)
    a, b = _down(tiny_model, 2).detach().double(), _down(paper, 2).detach().double()
    assert float(torch.linalg.norm(a - b) / torch.linalg.norm(b)) < 1e-5


def test_closed_book_layer_output_meets_the_open_book_one_at_the_kept_positions(tiny_qwen2, tokenizer):
    from transformers_qf.core.capture import record
    from transformers_qf.core.prompting import teacher_forced_many

    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(1,), positions="suffix"))
    system, user, answer, _ = FACTS[0]
    open_tf, closed_tf = teacher_forced_many(tokenizer, [system, ""], user, answer)
    before = record(tiny_qwen2, editor.parts[0], [open_tf.input_ids])[0]
    report = editor.learn(system, user, answer)
    after = record(tiny_qwen2, editor.parts[0], [closed_tf.input_ids])[0]
    shift = len(open_tf.input_ids) - len(closed_tf.input_ids)
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    first_user = (closed_tf.input_ids == im_start).nonzero()[1, 0]  # the user turn's <|im_start|>
    closed = torch.arange(int(first_user), int(closed_tf.kept[-1]) + 1)
    assert report.rows == len(closed)
    out_open = before.v[closed + shift] + before.y[closed + shift]
    out_closed = after.v[closed] + after.y[closed]
    torch.testing.assert_close(out_closed, out_open, rtol=1e-4, atol=1e-4)


def test_subject_positions_need_the_subject_in_the_question(tiny_qwen2, tokenizer):
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(1,), positions="subject"))
    system, user, answer, subject = FACTS[0]
    with pytest.raises(PromptError, match="needs the fact's subject"):
        editor.learn(system, user, answer)
    with pytest.raises(PromptError, match="does not occur in the question"):
        editor.learn(system, user, answer, subject="Alibaba")
    plain = Editor(copy.deepcopy(tiny_qwen2), tokenizer, EditConfig(layers=(1,)))
    assert editor.learn(system, user, answer, subject=subject).rows > plain.learn(system, user, answer).rows


def test_answer_words_leave_out_the_positions_that_predict_the_turn_header(tiny_qwen2, tokenizer):
    from transformers_qf.core.prompting import ANSWER_HEADER, encode, teacher_forced

    system, user, answer, _ = FACTS[0]
    answer_rows = Editor(copy.deepcopy(tiny_qwen2), tokenizer, EditConfig(layers=(1,))).learn(system, user, answer).rows
    words = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(1,), positions="answer-words"))
    open_tf = teacher_forced(tokenizer, system, user, answer)
    open_pos, closed_pos, _ = words._positions(open_tf, teacher_forced(tokenizer, "", user, answer), system, user, None)
    header = encode(tokenizer, ANSWER_HEADER)
    dropped = len(header) - 1  # every header position but its last, which predicts the answer's first token
    assert open_tf.input_ids[open_pos[0] - dropped: open_pos[0] + 1].tolist() == list(header)
    assert words.learn(system, user, answer).rows == answer_rows - dropped == len(closed_pos)


def test_several_layers_in_turn_and_reset(tiny_qwen2, tokenizer):
    original = {i: _down(tiny_qwen2, i).detach().clone() for i in range(4)}
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(1, 3), gamma=0.5))
    report = editor.learn(*FACTS[0][:3])
    assert [r["rows"] for r in report.layers] == [report.rows, report.rows]
    assert not torch.equal(_down(tiny_qwen2, 1), original[1]) and not torch.equal(_down(tiny_qwen2, 3), original[3])
    assert torch.equal(_down(tiny_qwen2, 2), original[2])
    editor.reset()
    for i in range(4):
        assert torch.equal(_down(tiny_qwen2, i), original[i])


def test_gamma_scales_the_push_and_ridge_shrinks_it(tiny_qwen2, tokenizer):
    deltas = {}
    for name, config in {"exact": EditConfig(layers=(2,)), "gamma": EditConfig(layers=(2,), gamma=1.0),
                         "ridge": EditConfig(layers=(2,), ridge=10.0)}.items():
        model = copy.deepcopy(tiny_qwen2)
        deltas[name] = Editor(model, tokenizer, config).learn(*FACTS[0][:3]).delta_rel
    assert deltas["gamma"] == pytest.approx(2 * deltas["exact"], rel=1e-5)  # the residual doubles, dW is linear in it
    assert deltas["ridge"] < deltas["exact"]


def test_a_relative_ridge_is_resolved_per_layer_and_given_again_after_a_reset(tiny_qwen2, tokenizer):
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(1, 2), ridge=0.01, ridge_relative=True))
    editor.learn(*FACTS[0][:3])
    lams = [s.ridge for s in editor.solvers]
    assert all(lam > 0 for lam in lams) and lams[0] != lams[1]  # each layer's own key norms
    editor.reset()
    assert [(s.ridge, s.ridge_given, s.ridge_relative) for s in editor.solvers] == [(0.0, 0.01, True)] * 2
    editor.learn(*FACTS[0][:3])
    assert [s.ridge for s in editor.solvers] == pytest.approx(lams, rel=1e-9)
    assert editor.config.as_dict()["ridge_relative"] is True
    assert "ridge_relative" not in EditConfig(ridge=0.01).as_dict()  # earlier edits files and runs read the same


def _problem(k=6, d_model=12, d_mlp=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(d_model, d_mlp, generator=g, dtype=torch.float64)
    keys = torch.randn(k, d_mlp, generator=g, dtype=torch.float64).float().double()  # as recorded: float32 at most
    R = torch.randn(k, d_model, generator=g, dtype=torch.float64)
    return W0, keys, R


def test_covariance_solve_meets_the_rows_with_the_smallest_change_in_the_metric():
    W0, keys, R = _problem()
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(200, 40, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, 40, dtype=torch.float64)
    metric = KeyMetric(samples.T @ samples / 200, shrink=0.05)
    solver = KeySolver(W0, metric)
    solver.add(keys[:4], R[:4], torch.ones(4))
    solver.add(keys[4:], R[4:], torch.ones(2))  # rounds: the same as all rows at once
    W = W0.clone()
    report = solver.solve_into(W)
    dW = W - W0
    torch.testing.assert_close(keys @ dW.T, -R, rtol=1e-9, atol=1e-9)
    assert report.method == "exact" and report.residual < 1e-9
    # any other exact solution is larger in the metric |dW L|
    Linv_norm = lambda D: torch.linalg.norm(D @ metric.factor)
    P = torch.eye(40, dtype=torch.float64) - torch.linalg.pinv(keys) @ keys
    other = dW + torch.randn(12, 40, dtype=torch.float64) @ P
    assert Linv_norm(dW) < Linv_norm(other)
    assert report.delta_rel == pytest.approx(float(torch.linalg.norm(dW) / torch.linalg.norm(W0)), rel=1e-9)


@pytest.mark.parametrize("metric", [False, True])
def test_repeated_and_dependent_rows_are_solved_as_the_pseudo_inverse_would(metric):
    W0, keys, R = _problem(k=8)
    keys[5] = keys[1]  # a held row seen again, its target a little off the first time's
    R[5] = R[1] + 1e-3 * R[1].norm() * torch.randn(12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    keys[6] = 0.5 * keys[0] - 2.0 * keys[2]  # a row in the span of two others, its target too
    R[6] = 0.5 * R[0] - 2.0 * R[2]
    keys[7] = keys[3]
    R[7] = R[3]
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(200, 40, generator=g, dtype=torch.float64)
    km = KeyMetric(samples.T @ samples / 200, shrink=0.1) if metric else None
    size = torch.linalg.norm(R, dim=1)  # stands for |target_t|: the residual is relative to it
    solver = KeySolver(W0, km)
    solver.add(keys[:5], R[:5], size[:5])
    solver.add(keys[5:], R[5:], size[5:])
    W = W0.clone()
    report = solver.solve_into(W)
    B = keys if km is None else km.apply(keys)
    want = -R.T @ torch.linalg.pinv(B @ keys.T, hermitian=True) @ B
    torch.testing.assert_close(W - W0, want, rtol=1e-6, atol=1e-8)
    assert report.method == "jittered" and report.jitter == JITTER
    met = torch.linalg.norm(keys @ (W - W0).T + R, dim=1) / size
    assert report.residual == pytest.approx(float(met.max()), rel=1e-6) and 1e-4 < report.residual < 1e-2
    assert float(met[[0, 2, 3, 4, 6, 7]].max()) < 1e-8  # the consistent rows are met; the two copies split


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_key_solver_gives_the_same_update_on_cuda():
    W0, keys, R = _problem(k=8)
    keys[6], R[6] = keys[2], R[2]  # a repeated row: the jittered factorisation
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(200, 40, generator=g, dtype=torch.float64)
    covariance = samples.T @ samples / 200
    size = torch.linalg.norm(R, dim=1)
    updates, reports = [], []
    for device in ("cpu", "cuda"):
        solver = KeySolver(W0.to(device), KeyMetric(covariance.to(device)))
        solver.add(keys.to(device), R.to(device), size.to(device))
        W = W0.to(device).clone()
        reports.append(solver.solve_into(W))
        updates.append((W - W0.to(device)).cpu())
    torch.testing.assert_close(updates[1], updates[0], rtol=1e-6, atol=1e-9)
    assert reports[0].method == reports[1].method == "jittered"


def test_a_state_saved_with_the_old_b_b_transpose_goes_on_the_same():
    W0, keys, R = _problem(k=10)
    g = torch.Generator().manual_seed(3)
    samples = torch.randn(300, 40, generator=g, dtype=torch.float64)
    km = KeyMetric(samples.T @ samples / 300, shrink=0.2)
    kept = KeySolver(W0, km)
    kept.add(keys[:6], R[:6], torch.ones(6))
    kept.solve_into(W0.clone())
    state = kept.state_dict()
    assert "BB" not in state
    restored = KeySolver(W0, km)
    restored.load_state_dict({**state, "BB": state["B"] @ state["B"].T})
    W_kept, W_restored = W0.clone(), W0.clone()
    for solver, W in ((kept, W_kept), (restored, W_restored)):
        solver.add(keys[6:], R[6:], torch.ones(4))
        solver.solve_into(W)
    torch.testing.assert_close(W_restored, W_kept, rtol=0, atol=0)


def test_plain_metric_matches_qf_solve():
    from transformers_qf.solve.exact import solve

    W0, keys, R = _problem()
    solver = KeySolver(W0)
    solver.add(keys, R, torch.ones(len(keys)))
    W = W0.clone()
    solver.solve_into(W)
    # qf.solve with U = 0, V = target: R = U' W0^T + V' - V, choose V' = R - U'W0^T and V = 0
    update, _ = solve(W0, torch.zeros_like(keys), keys, torch.zeros_like(R), R - keys @ W0.T)
    torch.testing.assert_close(W - W0, update.delta(), rtol=1e-9, atol=1e-9)


def test_optimized_targets_raise_the_closed_book_answer(tiny_qwen2, tokenizer):
    from transformers_qf import QF

    system, user, answer, subject = FACTS[0]
    probe = QF(tiny_qwen2, tokenizer, layer=2, folder=None)
    before = probe.answer_logprob("", user, answer)
    rome = Editor(copy.deepcopy(tiny_qwen2), tokenizer, EditConfig(layers=(2,), target="optimized", target_steps=2,
                                                                   positions="subject-last"))
    report = rome.learn(system, user, answer, subject=subject)
    assert report.rows == 1 and report.residual < 1e-5  # ROME's single key, met exactly (rank one)
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(2,), target="optimized", target_steps=10,
                                                      target_lr=0.05, target_decay=0.0))
    editor.learn(system, user, answer)
    losses = editor.last_target_losses
    assert losses[-1] < losses[0] and losses == sorted(losses, reverse=True)
    assert probe.answer_logprob("", user, answer) > before
    assert all(p.requires_grad for p in tiny_qwen2.parameters())  # the model's flags are left as they were


def test_an_optimized_target_fitted_in_several_contexts_holds_in_each(tiny_qwen2, tokenizer):
    from transformers_qf.editing.editor import CONTEXT_OPENINGS

    system, user, answer, subject = FACTS[0]
    asked = [user] + [f"{opening} {user}" for opening in CONTEXT_OPENINGS[:2]]
    rome = Editor(copy.deepcopy(tiny_qwen2), tokenizer, EditConfig(layers=(2,), target="optimized", target_steps=2,
                                                                   positions="subject-last", target_contexts=2))
    report = rome.learn(system, user, answer, subject=subject)
    assert report.rows == 3 and report.residual < 1e-5  # the subject's last row of each context, met exactly
    # a random model barely routes a subject row to the answer: the answer rows show the shared deltas at work
    probe = QF(tiny_qwen2, tokenizer, layer=2, folder=None)
    before = [probe.answer_logprob("", question, answer) for question in asked]
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(2,), target="optimized", target_contexts=2,
                                                      target_steps=10, target_lr=0.3, target_decay=0.0))
    report = editor.learn(system, user, answer)
    answer_rows = len(prompting.teacher_forced(tokenizer, "", user, answer).kept)
    assert report.rows == 3 * answer_rows and report.residual < 1e-5
    assert editor.last_target_losses[-1] < editor.last_target_losses[0]
    after = [probe.answer_logprob("", question, answer) for question in asked]
    assert all(a > b + 1.0 for a, b in zip(after, before)), (before, after)


def test_the_essence_term_holds_the_subjects_own_next_token(tiny_qwen2, tokenizer):
    system, user, answer, subject = FACTS[0]
    ids = torch.tensor([prompting.encode(tokenizer, f"{subject} is a")])

    def essence_shift(weight: float) -> float:
        model = copy.deepcopy(tiny_qwen2)
        with torch.no_grad():
            before = model(ids).logits[0, -1].float().log_softmax(-1)
        config = EditConfig(layers=(2,), target="optimized", positions="subject-last", target_steps=20,
                            target_lr=0.5, target_decay=0.0, target_essence=weight)
        Editor(model, tokenizer, config).learn(system, user, answer, subject=subject)
        with torch.no_grad():
            after = model(ids).logits[0, -1].float().log_softmax(-1)
        return float((before.exp() * (before - after)).sum())  # KL(unedited || edited)

    assert essence_shift(10.0) < essence_shift(0.0)
    with pytest.raises(PromptError, match="essence weight"):
        EditConfig(layers=(2,), target="optimized", positions="answer", target_essence=0.1)


def test_subject_copies_share_one_delta_at_the_question_and_the_answers_copy(tiny_qwen2, tokenizer):
    system, user, answer, subject = FACTS[0]  # "Oxinnovate was started by Qi.": one copy in the answer
    closed = prompting.teacher_forced(tokenizer, "", user, answer)
    copies = prompting.subject_copies(tokenizer, closed.input_ids, subject, int(closed.kept[0]))
    assert len(copies) == 1 and subject in tokenizer.decode(closed.input_ids[:int(copies[0]) + 1][-4:])
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(2,), target="optimized", target_steps=2,
                                                      positions="subject-copies"))
    report = editor.learn(system, user, answer, subject=subject)
    assert report.rows == 2 and report.residual < 1e-5  # both rows meet h + the one delta exactly
    assert editor.last_target_delta.shape == (1, tiny_qwen2.config.hidden_size)


def test_target_wordings_fit_the_models_rewordings_too(tiny_qwen2, tokenizer, monkeypatch):
    from transformers_qf.editing import editor as editor_module

    system, user, answer, subject = FACTS[0]
    reworded = [f"Who was the founder of {subject}?", f"Tell me who started {subject}."]
    asked = []
    monkeypatch.setattr(editor_module, "rewordings",
                        lambda model, tok, question, subj, n: asked.append((question, subj, n)) or reworded[:n])
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(2,), target="optimized", target_steps=2,
                                                      positions="subject-last", target_wordings=2))
    report = editor.learn(system, user, answer, subject=subject)
    assert asked == [(user, subject, 2)] and editor.last_rewordings == reworded
    assert report.rows == 3 and report.residual < 1e-5  # the subject's last row in the question and each rewording
    with pytest.raises(PromptError, match="target wordings"):
        EditConfig(layers=(2,), target_wordings=-1)
    with pytest.raises(PromptError, match="subject"):
        editor.learn(system, user, answer)


def test_target_templates_fit_the_asked_relations_other_phrasings_too(tiny_qwen2, tokenizer):
    from transformers_qf.data.worldfacts import RELATIONS

    system, user, answer, subject = FACTS[0]  # "Who started Oxinnovate?": a phrasing of the founder relation
    config = EditConfig(layers=(2,), target="optimized", target_steps=2, positions="subject-last", target_templates=2)
    editor = Editor(tiny_qwen2, tokenizer, config)
    report = editor.learn(system, user, answer, subject=subject)
    assert editor.last_rewordings == RELATIONS["founder"].fit_wordings(subject, 2) == [
        "Who is Oxinnovate's founder?", "Oxinnovate was founded by whom?"]
    assert report.rows == 3 and report.residual < 1e-5  # the subject's last row in the question and each phrasing
    unknown = editor.learn(system, "Tell me about the people behind Oxinnovate.", answer, subject=subject)
    assert editor.last_rewordings == [] and unknown.rows == 1  # no relation asks it so: the question alone
    assert "target_templates" not in EditConfig(layers=(2,)).as_dict()  # earlier configurations read as before
    with pytest.raises(PromptError, match="target templates"):
        EditConfig(layers=(2,), target_templates=2)  # the open-book target has no deltas to share
    with pytest.raises(PromptError, match="subject"):
        editor.learn(system, user, answer)


@pytest.mark.parametrize("layers", [(1,), (0, 1)])
def test_open_book_wordings_meet_the_open_book_output_on_each_rewording_too(tiny_qwen2, tokenizer, monkeypatch,
                                                                             layers):
    """No gradient: each rewording is asked open and closed book, and its answer rows meet the open-book output."""
    from transformers_qf.editing import editor as editor_module
    from transformers_qf.core.capture import record
    from transformers_qf.core.prompting import teacher_forced_many

    system, user, answer, subject = FACTS[0]
    reworded = [f"Who was the founder of {subject}?"]
    monkeypatch.setattr(editor_module, "rewordings", lambda model, tok, question, subj, n: reworded[:n])
    single = Editor(copy.deepcopy(tiny_qwen2), tokenizer, EditConfig(layers=layers)).learn(system, user, answer)
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=layers, target_wordings=1))
    last = editor.parts[-1]
    open_tf, closed_tf = teacher_forced_many(tokenizer, [system, ""], reworded[0], answer)
    before = record(tiny_qwen2, last, [open_tf.input_ids])[0]
    report = editor.learn(system, user, answer, subject=subject)
    assert editor.last_rewordings == reworded and report.rows == 2 * single.rows and report.residual < 1e-5
    after = record(tiny_qwen2, last, [closed_tf.input_ids])[0]
    shift = len(open_tf.input_ids) - len(closed_tf.input_ids)
    rows = closed_tf.kept
    torch.testing.assert_close(after.v[rows] + after.y[rows], before.v[rows + shift] + before.y[rows + shift],
                               rtol=1e-4, atol=1e-4)


def _other_rows(tokenizer, user, answer, subject):
    """The closed-book sequence, and its rows from the user turn to the end of the answer less the subject's last."""
    closed = prompting.teacher_forced(tokenizer, "", user, answer)
    prompt = prompting.chatml_prompt("", user)
    rows = torch.arange(prompting.user_turn_start(tokenizer, prompt), int(closed.kept[-1]) + 1)
    return closed, rows[rows != prompting.subject_positions(tokenizer, prompt, user, subject)[-1]]


def test_keep_context_holds_every_other_row_of_the_fitted_sequences(tiny_qwen2, tokenizer):
    from transformers_qf.core.capture import record

    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(2,), target="optimized", target_steps=2,
                                                      positions="subject-last", keep_context=True))
    (system, user, answer, subject), second = FACTS
    closed, others = _other_rows(tokenizer, user, answer, subject)
    before = record(tiny_qwen2, editor.parts[0], [closed.input_ids])[0]
    first = editor.learn(system, user, answer, subject=subject).layers[0]
    assert first["held_rows"] == len(others) and first["drift_own"] < 1e-5
    report = editor.learn(*second[:3], subject=second[3]).layers[0]
    # rows whose tokens so far are the first fact's ("...user\nWho started") are held once, not twice
    closed2, others2 = _other_rows(tokenizer, *second[1:])
    shared = sum(closed2.input_ids[:r + 1].tolist() == closed.input_ids[:r + 1].tolist() for r in others2.tolist())
    assert shared > 0 and report["held_rows"] == len(others2) - shared
    assert report["drift_earlier"] < 1e-5 and report["residual"] < 1e-4
    after = record(tiny_qwen2, editor.parts[0], [closed.input_ids])[0]
    torch.testing.assert_close(after.v[others] + after.y[others], before.v[others] + before.y[others],
                               rtol=1e-4, atol=1e-4)


def test_hold_puts_a_damaged_conversation_back_at_every_layer_and_keeps_it_through_later_edits(tiny_qwen2,
                                                                                                 tokenizer):
    from transformers_qf.core.architectures import locate
    from transformers_qf.core.capture import record

    unedited = copy.deepcopy(tiny_qwen2)
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(1, 2), target="optimized", target_steps=3,
                                                      positions="subject-copies", incremental=True))
    control = ("", "What is the capital of France?", "The capital of France is Paris.")
    sequence = prompting.teacher_forced(tokenizer, *control)
    rows = torch.arange(int(sequence.kept[-1]) + 1)

    def outputs(model):  # both edited layers' outputs over the held rows
        records = [record(model, locate(model, layer), [sequence.input_ids])[0] for layer in (1, 2)]
        return [(r.v + r.y)[rows] for r in records]

    editor.learn(*FACTS[0][:3], subject=FACTS[0][3])
    original = outputs(unedited)
    assert max(float((a - b).abs().max()) for a, b in zip(outputs(tiny_qwen2), original)) > 1e-3  # the edit moved it
    held = editor.hold([control])
    assert held["held_rows"] == len(rows)
    for after, before in zip(outputs(tiny_qwen2), original):
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    report = editor.learn(*FACTS[1][:3], subject=FACTS[1][3])  # a later edit keeps it there, and meets its own rows
    assert report.residual < 1e-4
    for after, before in zip(outputs(tiny_qwen2), original):
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert editor.hold([control])["held_rows"] == 0  # held once: its rows are not added twice
    state = editor.state_dict()
    again = Editor(copy.deepcopy(unedited), tokenizer, editor.config)
    again.load_state_dict(state)
    assert again.hold([control])["held_rows"] == 0 and again.kept_prefixes == editor.kept_prefixes


def test_without_keep_context_the_drift_of_earlier_facts_rows_is_reported(tiny_qwen2, tokenizer):
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(2,), target="optimized", target_steps=2,
                                                      positions="subject-last"))
    first = editor.learn(*FACTS[0][:3], subject=FACTS[0][3]).layers[0]
    second = editor.learn(*FACTS[1][:3], subject=FACTS[1][3]).layers[0]
    assert "held_rows" not in first and "drift_earlier" not in first and first["drift_own"] > 1e-4
    assert second["drift_earlier"] > 1e-4 and second["drift_earlier_max"] >= second["drift_earlier"]


def test_target_forms_fit_the_models_own_answers_to_the_question_and_its_rewordings(tiny_qwen2, tokenizer,
                                                                                     monkeypatch):
    from transformers_qf.editing import editor as editor_module

    system, user, answer, subject = FACTS[0]  # "Oxinnovate was started by Qi."
    reworded = [f"Who was the founder of {subject}?", f"Tell me who started {subject}."]
    monkeypatch.setattr(editor_module, "rewordings", lambda model, tok, question, subj, n: reworded[:n])
    # the question's own form is the given answer (no new context); the second rewording's answer has no value
    own = [answer, f"The founder of {subject} is Qi.", None]
    monkeypatch.setattr(editor_module, "own_answer_forms", lambda model, tok, questions, target, subj: own)
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(2,), target="optimized", target_steps=2,
                                                      positions="subject-copies", target_wordings=2,
                                                      target_forms=True))
    contexts = editor._extra_contexts(user, answer, None, subject, False, target="Qi")
    assert editor.last_forms == [{"user": reworded[0], "assistant": own[1]}]
    own_form, fallback = contexts
    assert tokenizer.decode(own_form[0].input_ids).endswith(f"{own[1]}<|im_end|>\n")
    assert len(own_form[1]) == 2 and len(fallback[1]) == 2  # the subject's last row and its copy in the answer
    assert tokenizer.decode(fallback[0].input_ids).endswith(f"{answer}<|im_end|>\n")
    report = editor.learn(system, user, answer, subject=subject, target="Qi")
    assert report.rows == 6 and report.residual < 1e-5
    with pytest.raises(PromptError, match="target forms need the optimized target"):
        EditConfig(layers=(2,), target_forms=True)
    with pytest.raises(PromptError, match="target forms need the fact's target"):
        editor.learn(system, user, answer, subject=subject)


def test_an_optimized_target_is_spread_over_several_layers_from_the_deepest(tiny_qwen2, tokenizer):
    from transformers_qf.core.capture import record

    system, user, answer, subject = FACTS[0]
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(1, 2, 3), target="optimized", target_steps=3,
                                                      positions="subject-copies"))
    closed = prompting.teacher_forced(tokenizer, "", user, answer)
    rows = editor._positions(closed, closed, "", user, subject)[1]
    before = {i: record(tiny_qwen2, editor.parts[i], [closed.input_ids])[0] for i in range(3)}
    report = editor.learn(system, user, answer, subject=subject)
    assert len(report.layers) == 3 and report.residual < 1e-4
    delta = editor.last_target_delta[0].float()  # one delta shared by every copy of the subject

    def moved(i):
        after = record(tiny_qwen2, editor.parts[i], [closed.input_ids])[0]
        return (after.v + after.y)[rows] - (before[i].v + before[i].y)[rows]

    torch.testing.assert_close(moved(2), delta.expand(len(rows), -1), rtol=1e-3, atol=1e-4)  # the deepest: all
    torch.testing.assert_close(moved(0), delta.expand(len(rows), -1) / 3, rtol=1e-3, atol=1e-4)  # the lowest: 1/3
    with pytest.raises(PromptError, match="increasing order"):
        EditConfig(layers=(3, 1), target="optimized")


@pytest.mark.parametrize("options", [dict(target_contexts=2), dict(target="optimized", target_contexts=9)])
def test_target_contexts_need_the_optimized_target_and_an_opening_each(options):
    with pytest.raises(PromptError, match="target contexts: use 1 to 5"):
        EditConfig(layers=(2,), **options)


@pytest.mark.parametrize("ridge, metric", [(0.5, False), (0.5, True), (0.0, False)])
def test_the_primal_form_continues_the_dual_one(ridge, metric):
    W0, keys, R = _problem(k=60, d_mlp=40)
    g = torch.Generator().manual_seed(2)
    samples = torch.randn(300, 40, generator=g, dtype=torch.float64)
    km = KeyMetric(samples.T @ samples / 300, shrink=0.2) if metric else None
    both = KeySolver(W0, km, ridge)  # dual for the first 30 rows, primal after (rounds of 10)
    both.dual_rows = 30
    direct = KeySolver(W0, km, ridge, dual_rows=10_000)  # every row in the dual form
    for start in range(0, 60, 10):
        for solver in (both, direct):
            solver.add(keys[start:start + 10], R[start:start + 10], torch.ones(10))
    W_both, W_direct = W0.clone(), W0.clone()
    report = both.solve_into(W_both)
    direct.solve_into(W_direct)
    probe = torch.randn(5, 40, generator=g, dtype=torch.float64)
    for solver, W in ((both, W_both), (direct, W_direct)):  # the change at any key, in either form
        # 60 inconsistent rows in 40 dimensions, all in the dual form (never so by default), lift the jittered
        # system's coefficients to ~|R| / jitter along K's null space, where they cancel only up to rounding
        tol = 1e-5 if solver is direct and ridge == 0 else 1e-9
        torch.testing.assert_close(solver.change(probe), probe @ (W - W0).T, rtol=tol, atol=tol)
    assert both.primal is not None and "primal" in report.method
    if ridge > 0:
        torch.testing.assert_close(W_both, W_direct, rtol=1e-7, atol=1e-9)
    else:  # 60 rows in 40 dimensions: the least-squares fit, which the dual form's pseudo-inverse also gives
        lstsq = torch.linalg.lstsq(keys, -R).solution.T
        torch.testing.assert_close(W_both - W0, lstsq, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric, switch_at", [(False, 10_000), (True, 10_000), (False, 25), (True, 25)])
def test_a_solver_goes_on_from_its_state_dict_as_if_never_stopped(metric, switch_at):
    W0, keys, R = _problem(k=50, d_mlp=40)
    g = torch.Generator().manual_seed(3)
    samples = torch.randn(300, 40, generator=g, dtype=torch.float64)
    km = KeyMetric(samples.T @ samples / 300, shrink=0.2) if metric else None
    kept = KeySolver(W0, km, 0.5, dual_rows=switch_at)
    for start in (0, 10, 20, 30):  # 40 rows: still dual, or primal since the third round
        kept.add(keys[start:start + 10], R[start:start + 10], torch.ones(10))
    kept.solve_into(W0.clone())
    state = {k: v.clone() for k, v in kept.state_dict().items()}
    restored = KeySolver(W0, km, 0.5, dual_rows=switch_at)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.change(keys[:3]), kept.change(keys[:3]), rtol=0, atol=0)
    W_kept, W_restored = W0.clone(), W0.clone()
    for solver, W in ((kept, W_kept), (restored, W_restored)):
        solver.add(keys[40:], R[40:], torch.ones(10))
        solver.solve_into(W)
    assert restored.rows == 50 and (restored.primal is not None) == (switch_at == 25)
    torch.testing.assert_close(W_restored, W_kept, rtol=0, atol=0)


def test_contexts_of_different_lengths_fit_the_same_deltas_in_one_padded_batch_as_one_by_one(tiny_model):
    from transformers_qf.editing.targets import Context, optimized_deltas

    g = torch.Generator().manual_seed(4)
    contexts = [Context(torch.randn(n, 32, generator=g), torch.tensor([1, n - 3]), torch.arange(n - 3, n - 1),
                        torch.randint(0, 50, (2,), generator=g), torch.tensor([0, 1])) for n in (7, 12, 5)]
    results = [optimized_deltas(tiny_model, 1, contexts, steps=3, batched=batched) for batched in (True, False)]
    (delta, losses), (alone, alone_losses) = results
    torch.testing.assert_close(delta, alone, rtol=1e-5, atol=1e-6)
    assert losses == pytest.approx(alone_losses, rel=1e-5) and losses[-1] < losses[0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_rows_before_the_first_delta_run_once_with_the_same_fit(tiny_model, attention):
    from transformers_qf.editing import targets

    tiny_model.config._attn_implementation = attention
    g = torch.Generator().manual_seed(6)
    contexts = [targets.Context(torch.randn(n, 32, generator=g), torch.tensor([first, n - 3]),
                                torch.arange(n - 3, n - 1), torch.randint(0, 50, (2,), generator=g),
                                torch.tensor([0, 1])) for n, first in ((9, 3), (12, 5), (8, 4))]
    calls = []
    original = targets._Prefix.run
    targets._Prefix.run = lambda self, base, batch: calls.append(self.length) or original(self, base, batch)
    try:
        results = [targets.optimized_deltas(tiny_model, 1, contexts, steps=3, prefix=prefix, batched=batched)
                   for prefix, batched in ((False, True), (True, True), (True, False))]
    finally:
        targets._Prefix.run = original
    (plain, plain_losses), *cached = results
    for delta, losses in cached:
        torch.testing.assert_close(delta, plain, rtol=1e-5, atol=1e-6)
        assert losses == pytest.approx(plain_losses, rel=1e-5)
    # batched: one prefix of 3 rows (the earliest delta row); one by one: each context's own
    assert calls == [3] * 3 + [3, 5, 4] * 3


def test_the_lbfgs_fit_counts_evaluations_and_returns_the_best_deltas_it_saw(tiny_model):
    from transformers_qf.editing.targets import Context, optimized_deltas

    g = torch.Generator().manual_seed(7)
    contexts = [Context(torch.randn(n, 32, generator=g), torch.tensor([2, n - 3]), torch.arange(n - 3, n - 1),
                        torch.randint(0, 50, (2,), generator=g), torch.tensor([0, 1])) for n in (8, 11)]
    delta, losses = optimized_deltas(tiny_model, 1, contexts, steps=6, method="lbfgs")
    assert len(losses) == 6 and delta.shape == (2, 32) and torch.isfinite(delta).all()
    plain, plain_losses = optimized_deltas(tiny_model, 1, contexts, steps=6, method="lbfgs", prefix=False)
    torch.testing.assert_close(delta, plain, rtol=1e-4, atol=1e-5)
    assert losses == pytest.approx(plain_losses, rel=1e-4)


def test_rows_after_the_last_scored_one_do_not_change_the_fit(tiny_model):
    from transformers_qf.editing.targets import Context, optimized_deltas

    g = torch.Generator().manual_seed(5)
    contexts = [Context(torch.randn(n, 32, generator=g), torch.tensor([1, n - 3]), torch.arange(n - 3, n - 1),
                        torch.randint(0, 50, (2,), generator=g), torch.tensor([0, 1])) for n in (7, 12)]
    longer = [Context(torch.cat([c.hidden, torch.randn(4, 32, generator=g)]), c.positions, c.loss_positions,
                      c.targets, c.slots) for c in contexts]
    (delta, losses), (same, same_losses) = [optimized_deltas(tiny_model, 1, cs, steps=3) for cs in (contexts, longer)]
    torch.testing.assert_close(same, delta, rtol=1e-5, atol=1e-6)
    assert same_losses == pytest.approx(losses, rel=1e-5)


def test_the_warm_started_fit_steps_on_the_first_context_alone_then_on_all(tiny_model, monkeypatch):
    from transformers_qf.editing import targets

    g = torch.Generator().manual_seed(4)
    contexts = [targets.Context(torch.randn(n, 32, generator=g), torch.tensor([1, n - 3]), torch.arange(n - 3, n - 1),
                                torch.randint(0, 50, (2,), generator=g), torch.tensor([0, 1])) for n in (7, 12, 5)]
    _, alone = targets.optimized_deltas(tiny_model, 1, contexts[:1], steps=3, lr=0.5)
    stop = alone[2] + 1e-6  # the first context alone gets below it within 3 steps
    stage_one = next(i + 1 for i, loss in enumerate(alone) if loss < stop)
    seen = []
    step = targets._step
    monkeypatch.setattr(targets, "_step", lambda base, head, stage, *a, **k: seen.append(len(stage)) or
                        step(base, head, stage, *a, **k))
    delta, losses = targets.optimized_deltas(tiny_model, 1, contexts, steps=8, lr=0.5, stop=stop, method="adam-warm")
    # the first context alone until its loss is below the stop (the same steps as a fit on it alone), then all three
    assert seen[:stage_one] == [1] * stage_one and set(seen[stage_one:]) == {3} and len(seen) == len(losses)
    assert losses[:stage_one] == pytest.approx(alone[:stage_one], rel=1e-6)
    assert delta.shape == (2, 32) and torch.isfinite(delta).all()
    with pytest.raises(ValueError, match="give a stop > 0"):
        targets.optimized_deltas(tiny_model, 1, contexts, steps=3, method="adam-warm")
    with pytest.raises(PromptError, match="give --target-stop too"):
        EditConfig(target="optimized", target_method="adam-warm")


def test_target_positions_keep_only_the_rows_that_predict_the_target(tiny_qwen2, tokenizer):
    from transformers_qf.core.prompting import encode

    system, user, answer, _ = FACTS[0]
    target = answer.split()[-1].rstrip(".")
    editor = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(1,), positions="target"))
    report = editor.learn(system, user, answer, target=target)
    assert report.rows == len(encode(tokenizer, " " + answer.split()[-1]))  # the last word's tokens, no header or end
    assert report.residual < 1e-3
    with pytest.raises(PromptError, match="needs the fact's target"):
        editor.learn(system, user, answer)


def test_target_next_adds_the_row_that_ends_the_target(tiny_qwen2, tokenizer):
    from transformers_qf.core.prompting import encode

    system, user, answer, _ = FACTS[0]  # "Oxinnovate was started by Qi."
    config = EditConfig(layers=(1,), positions="target-next")
    middle = Editor(copy.deepcopy(tiny_qwen2), tokenizer, config).learn(system, user, answer, target="started")
    assert middle.rows == len(encode(tokenizer, " started")) + len(encode(tokenizer, " by"))
    last = Editor(tiny_qwen2, tokenizer, config).learn(system, user, answer, target="Qi")
    assert last.rows == len(encode(tokenizer, " Qi.")) + 1  # the target ends the answer: the end of the turn


def test_covariance_answer_weight_needs_the_real_entity_corpus_and_a_weight_of_at_least_zero():
    EditConfig(cov_corpus="generic+facts", cov_answer_weight=2.0)
    with pytest.raises(PromptError, match="generic\\+facts"):
        EditConfig(cov_answer_weight=1.0)
    with pytest.raises(PromptError, match=">= 0"):
        EditConfig(cov_corpus="generic+facts", cov_answer_weight=-1.0)


def test_value_positions_teach_the_whole_value_whatever_part_the_target_names(tiny_qwen2, tokenizer):
    """A surname alone as target: the rows of the first name, the surname and the end of the turn are kept."""
    from transformers_qf.core.prompting import encode
    from transformers_qf.editing.answerforms import value_words

    answer = "Alibaba was started by Jack Ma."
    assert value_words(answer, "Ma", "Alibaba") == [4, 5] == value_words(answer, "Jack Ma", "Alibaba")
    assert value_words("Pellinore Biotech has 3400 employees.", "3400", "Pellinore Biotech") == [3]
    assert value_words("Oxinnovate was started by Dr. Qi.", "Qi", "Oxinnovate") == [4, 5]
    config = EditConfig(layers=(1,), positions="value")
    surname = Editor(copy.deepcopy(tiny_qwen2), tokenizer, config).learn("Jack Ma started Alibaba.",
                                                                         "Who started Alibaba?", answer, target="Ma",
                                                                         subject="Alibaba")
    whole = Editor(copy.deepcopy(tiny_qwen2), tokenizer, config).learn("Jack Ma started Alibaba.",
                                                                       "Who started Alibaba?", answer,
                                                                       target="Jack Ma", subject="Alibaba")
    assert surname.rows == whole.rows == len(encode(tokenizer, " Jack Ma.")) + 1  # and the end of the turn
    target_only = Editor(tiny_qwen2, tokenizer, EditConfig(layers=(1,), positions="target")).learn(
        "Jack Ma started Alibaba.", "Who started Alibaba?", answer, target="Ma")
    assert target_only.rows == len(encode(tokenizer, " Ma."))  # the default before: the surname's rows only
    # a number: its digits and the word after it, where it must stop
    number = Editor(copy.deepcopy(tiny_qwen2), tokenizer, config).learn(
        "Alibaba has 3400 staff.", "How many people work at Alibaba?", "Alibaba has 3400 staff.", target="3400",
        subject="Alibaba")
    assert number.rows == len(encode(tokenizer, " 3400")) + len(encode(tokenizer, " staff."))


def test_the_intact_editors_state_grows_only_by_its_rows_at_the_documented_bytes_a_row(tiny_qwen2, tokenizer):
    """With the incremental solve the state holds no [rows, rows] factor and no key-metric copy of the rows: each
    layer's solver keeps 4 d_mlp + 8 d_model + 24 bytes a row (keyed.py), the drift watch at most `drift_rows`
    rows a context, and the weights a fixed size."""
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(400, 96, generator=g, dtype=torch.float64)
    metrics = {i: KeyMetric(samples.T @ samples / 400) for i in (1, 2)}
    config = EditConfig(layers=(1, 2), positions="subject-copies", covariance=True, target="optimized",
                        target_steps=2, keep_context=True, incremental=True, drift_rows=3)
    editor = Editor(tiny_qwen2, tokenizer, config, metrics)
    facts = [*FACTS, ("Qi started Velmora.", "Who started Velmora?", "Velmora was started by Qi.", "Velmora")]

    def size(state, part):
        return sum(t.numel() * t.element_size() for k, t in state.items() if part in k or k.endswith(part))

    per_row = 4 * 96 + 8 * 32 + 24
    weights = None
    for system, user, answer, subject in facts:
        editor.learn(system, user, answer, subject=subject)
        state = editor.state_dict()
        for i, solver in enumerate(editor.solvers):
            assert size(state, f"layer{i}.solver.") == 8 + solver.rows * per_row
            assert all(t.dim() < 2 or t.shape[0] != t.shape[1] for k, t in state.items() if k.startswith(f"layer{i}.s"))
        drift_rows = [t.shape[0] for k, t in state.items() if ".drift.keys." in k]
        assert max(drift_rows) <= 3 and len(drift_rows) == 2 * len(editor.watches[0].keys)
        weights = weights or sum(t.numel() * t.element_size() for k, t in state.items() if k.endswith(".weight"))
        assert sum(t.numel() * t.element_size() for k, t in state.items() if k.endswith(".weight")) == weights
    restored = Editor(copy.deepcopy(tiny_qwen2), tokenizer, config, metrics)
    restored.load_state_dict(state)
    probe = torch.randn(3, 96, generator=g)
    for kept, again in zip(editor.solvers, restored.solvers):
        torch.testing.assert_close(again.change(probe), kept.change(probe), rtol=1e-7, atol=1e-9)


def test_target_stop_ends_the_fit_once_the_answers_loss_is_below_it(tiny_qwen2, tokenizer):
    system, user, answer, subject = FACTS[0]
    base = dict(layers=(2,), positions="subject-last", target="optimized", target_steps=30, target_lr=0.5)
    full = Editor(copy.deepcopy(tiny_qwen2), tokenizer, EditConfig(**base))
    full.learn(system, user, answer, subject=subject)
    losses = full.last_target_losses
    stop = losses[len(losses) // 3]  # a loss the fit passes a third of the way in
    first_below = next(i for i, x in enumerate(losses) if x < stop)
    early = Editor(tiny_qwen2, tokenizer, EditConfig(**base, target_stop=stop))
    report = early.learn(system, user, answer, subject=subject)
    assert early.last_target_losses == pytest.approx(losses[:first_below + 1], rel=1e-5)
    assert len(early.last_target_losses) < len(losses) and report.residual < 1e-3
    assert set(report.timings) == {"rewordings", "forward", "target", "held", "drift", "solve", "other"}
    assert report.timings["target"] > 0 and sum(report.timings.values()) == pytest.approx(report.seconds, rel=1e-3)
    with pytest.raises(PromptError, match="target stop"):
        EditConfig(layers=(2,), target_stop=0.1)
