"""hyperbolic/training/objective.py: the loss a training batch is scored with, in one place."""

import pytest
import torch

from data.synthetic import DEMO_CLASSES, demo_ontology
from hyperbolic.config import TrainConfig
from hyperbolic.hierarchy.cones import EntailmentObjective, Hierarchy, entailment_batch_term
from hyperbolic.hierarchy.ontology import Ontology
from hyperbolic.training.objective import batch_columns, clip_contrastive, multi_positive_contrastive, positives_matrix
from hyperbolic.training.trainer import Trainer

DIM = 16
LABELS = [[0, 1], [2], [4], [5, 6], [7], [8], [9], [0]]  # class 3 held out


def _trainer(**cfg):
    h = Hierarchy.build(Ontology(demo_ontology()), DEMO_CLASSES)
    entailment = EntailmentObjective(h, exclude=[3])
    torch.manual_seed(0)
    prompts = torch.nn.functional.normalize(torch.randn(len(h.prompt_names), DIM, dtype=torch.float64), dim=-1)
    seen = [k for k in range(10) if k != 3]
    config = TrainConfig(parquet_dir="x", c=1.0, temperature=0.2, entailment_weight=0.5, **cfg)
    trainer = Trainer(config, DIM, prompts.float(), seen, entailment=entailment)
    return trainer, entailment, seen


def test_columns_and_positives():
    assert batch_columns([[2, 0], [5]], seen=[0, 1, 2, 4, 5], negatives="batch") == [0, 2, 5]
    assert batch_columns([[2, 0], [5]], seen=[0, 1, 2, 4, 5], negatives="all-classes") == [0, 1, 2, 4, 5]
    assert positives_matrix([[2, 0], [5]], [0, 2, 5]).tolist() == [[True, True, False], [False, False, True]]


@pytest.mark.parametrize("negatives", ["batch", "all-classes"])
def test_batch_loss_is_contrastive_plus_weighted_cone_term(negatives):
    trainer, entailment, seen = _trainer(negatives=negatives)
    audio = torch.nn.functional.normalize(torch.randn(len(LABELS), DIM), dim=-1)
    with torch.no_grad():
        got = trainer.batch_loss(audio, LABELS, [row[0] for row in LABELS])
        # Written out independently: each part projected on its own, then summed.
        c = trainer.geometry.c
        a = trainer.projector(audio, c=c)
        columns = sorted({k for row in LABELS for k in row} | (set(seen) if negatives == "all-classes" else set()))
        t = trainer.projector(trainer.prompts[columns], c=c)
        positives = torch.tensor([[k in row for k in columns] for row in LABELS])
        contrastive = multi_positive_contrastive(trainer.point_logits(a, t), positives)
        rows = trainer.projector(trainer.prompts[entailment.rows], c=c)
        local = [[entailment.rows.tolist().index(k) for k in row] for row in LABELS]
        cone = entailment_batch_term(a, local, rows, entailment.pairs, c=c, K=entailment.K)
    torch.testing.assert_close(got, contrastive + 0.5 * cone, rtol=1e-6, atol=0)
    assert cone > 0  # the random projector leaves clips outside their cones: the term is there


def test_batch_projects_audio_once_and_prompts_once():
    trainer, _, _ = _trainer()
    calls = []
    trainer.projector.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    audio = torch.nn.functional.normalize(torch.randn(len(LABELS), DIM), dim=-1)
    trainer.batch_loss(audio, LABELS, [row[0] for row in LABELS])
    assert calls == [len(LABELS), len(trainer.entailment.rows)]
    calls.clear()
    trainer.cfg.text_pairing = "first-label"
    loss = trainer.batch_loss(audio, LABELS, [row[0] for row in LABELS])
    assert calls == [len(LABELS), len(trainer.entailment.rows)]
    a = trainer.projector(audio, c=trainer.geometry.c)
    t = trainer.projector(trainer.prompts[[row[0] for row in LABELS]], c=trainer.geometry.c)
    cone = loss - clip_contrastive(trainer.point_logits(a, t))
    assert cone.item() > 0


def test_caption_cone_term_pairs_each_caption_with_its_own_clip_only():
    """Closed form on the Poincare disk (c = 1, K = 0.1, projector = identity). Texts: row 0 a
    class prompt, rows 1 and 2 captions, all at (0.5, 0). Clip 0 (labels: class 0, caption 1)
    lies further out on the same ray: inside the cone, violation 0. Clip 1 (caption 2) lies at
    (-0.5, 0): the geodesic from the caption to it runs back through the origin, so the angle is
    pi and the violation pi - arcsin(K (1 - |x|^2) / |x|). The class pair (clip 0, row 0) is not
    a caption pair and must not count, whatever its violation."""
    import math

    from hyperbolic.training.objective import caption_cone_term
    prompts = torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.5, 0.0]], dtype=torch.float64)
    audio = torch.tensor([[0.7, 0.0], [-0.5, 0.0]], dtype=torch.float64)
    term = caption_cone_term(audio, [[0, 1], [2]], prompts=prompts, project=lambda x: x, num_classes=1,
                             K=0.1, c=1.0)
    psi = math.asin(0.1 * (1 - 0.25) / 0.5)
    assert term.item() == pytest.approx((0.0 + (math.pi - psi)) / 2, abs=1e-5)
    # No caption in the batch: an empty mean is 0, not NaN.
    assert caption_cone_term(audio, [[0], [0]], prompts=prompts, project=lambda x: x, num_classes=1,
                             K=0.1, c=1.0).item() == 0.0
