"""The discriminator of ``fm-edge distill --method adversarial``: is this 32x32 digit real MNIST, for its label?

A small conditional critic: three strided 4x4 convs (32 -> 16 -> 8 -> 4) with LeakyReLU, then a linear score
plus a projection term, the inner product of the features with a learned embedding of the label (labels
0-9 only: the adversarial term trains the conditional digits). Every weight is spectrally normalised, which
keeps the hinge game stable without a gradient penalty. A linear class head on the same features (an
auxiliary classifier, trained on real digits only) lets the student be penalised for a digit that reads as
another class (``--class-weight``). It exists only during training: the checkpoints hold it (so ``--resume``
continues the same game, and ``--critic-init`` starts the next stage's critic from it), the shipped student
does not.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from fm_edge.convention import MODEL_SIZE, NUM_CLASSES


class Critic(nn.Module):
    """``critic(x [B,1,32,32] in [-1,1], labels [B] in 0-9) -> score [B]``: higher means more real."""

    def __init__(self, width: int = 64, size: int = MODEL_SIZE):
        super().__init__()
        chans = (1, width, 2 * width, 4 * width)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans, chans[1:]):
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        n = chans[-1] * (size // 8) ** 2
        self.score = spectral_norm(nn.Linear(n, 1))
        self.label_embedding = spectral_norm(nn.Embedding(NUM_CLASSES, n))
        self.classify = nn.Linear(n, NUM_CLASSES)

    def heads(self, x, labels):
        """(score [B], class logits [B, 10]) from one pass through the features."""
        h = self.features(x).flatten(1)
        return self.score(h).squeeze(1) + (self.label_embedding(labels) * h).sum(1), self.classify(h)

    def forward(self, x, labels):
        return self.heads(x, labels)[0]


def critic_loss(critic, real, real_labels, fake, fake_labels, classify: bool = False):
    """The critic's hinge loss: real digits scored above +1, the student's (detached) digits below -1; with
    ``classify``, plus the class head's cross-entropy on the real digits' labels."""
    score, logits = critic.heads(real, real_labels)
    loss = F.relu(1 - score).mean() + F.relu(1 + critic(fake.detach(), fake_labels)).mean()
    return loss + F.cross_entropy(logits, real_labels) if classify else loss


def generator_loss(critic, fake, labels):
    """The student's terms (the critic's weights get no gradient): the hinge term, which raises the critic's
    score of its digits, and the class term, the class head's cross-entropy against the digits' labels."""
    for p in critic.parameters():
        p.requires_grad_(False)
    try:
        score, logits = critic.heads(fake, labels)
        return -score.mean(), F.cross_entropy(logits, labels)
    finally:
        for p in critic.parameters():
            p.requires_grad_(True)


def critic_path(path: str) -> Path:
    """A run's ``checkpoint-N`` folder -> its ``critic.safetensors``; a file stays itself."""
    return Path(path) / "critic.safetensors" if Path(path).is_dir() else Path(path)


def critic_weights(path: str) -> dict:
    """The critic weights of ``--critic-init`` (a run's ``checkpoint-N`` folder, or its ``critic.safetensors``),
    checked against a fresh critic; a UsageError names what is wrong."""
    from safetensors.torch import load_file

    from fm_edge.errors import UsageError, first_line

    file = critic_path(path)
    if not file.is_file():
        raise UsageError(
            f"--critic-init: no critic weights at {str(file)!r} (give a run's checkpoint-N folder)"
        )
    try:
        weights = load_file(file)
        Critic().load_state_dict(weights)
    except Exception as exc:
        why = first_line(exc).rstrip(":")
        raise UsageError(f"--critic-init: {str(file)!r} is not a critic's weights ({why})") from None
    return weights


def new_critic(seed: int, lr: float, betas: tuple[float, float], device, init: str | None = None):
    """A critic, its first weights drawn from ``seed`` or, with ``init``, an earlier run's critic (a warm
    start: :func:`critic_weights`), and a fresh AdamW with these ``betas``."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        critic = Critic().to(device)
    if init is not None:
        critic.load_state_dict(critic_weights(init))
    return critic, torch.optim.AdamW(critic.parameters(), lr=lr, betas=betas, weight_decay=0.0)


def critic_round(
    critic, optimizer, real, real_labels, fake, labels, classify: bool, student_terms: bool = True
):
    """One round of the game on a batch: the critic steps on ``real`` against the student's ``fake`` digits
    (detached), then scores the fakes for the student. Returns (the critic's loss, the student's hinge term,
    its class term); both terms are None with ``student_terms`` False (a critic warming up)."""
    d_loss = critic_loss(critic, real, real_labels, fake, labels, classify)
    optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizer.step()
    if not student_terms:
        return d_loss.detach(), None, None
    return (d_loss.detach(), *generator_loss(critic, fake, labels))
