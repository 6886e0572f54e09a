"""A seed per purpose, so what training draws never depends on what ran before it.

``base.seed`` alone used to seed the global RNGs once per process, and everything drew from
them in turn. Then any step that ran on one path and not on another shifted every later draw:
filling the frozen-feature cache creates one DataLoader per view, and each DataLoader iterator
takes its base seed from torch's global RNG. So a run with a cold cache trained its head with
other dropout masks than a run with a warm one, and ended with other weights (issue 10: val
accuracy 0.750 vs 0.722 on the same data, params and seed).

Now each consumer derives its own seed from ``(base.seed, purpose...)`` with
:func:`derive_seed` (a hash: stable across runs, processes and Python versions):

- model init: :func:`seed_model_init` right before the model is built (the backbone's random
  weights with ``pretrained: false`` are part of the frozen-feature cache's key through the seed);
- each training epoch: :func:`seed_epoch` sets torch's global RNG from ``(seed, epoch, rank)``
  before the first batch, so dropout, stochastic depth and on-the-fly augmentation in an epoch
  depend on nothing else — a resumed run replays exactly the epochs it did not finish;
- DataLoaders get their own :func:`generator`, so creating one draws nothing from the global RNG;
- the cached views' augmentations are seeded per view and image
  (:func:`visionops.train.features.view_seed`), and the cache fill runs inside
  ``torch.random.fork_rng``, so filling it leaves the caller's RNG as it found it.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed from ``seed`` and what it is for (``derive_seed(42, "epoch", 3, 0)``)."""
    text = ":".join(str(part) for part in (seed, *purpose))
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**63


def generator(seed: int, *purpose: object) -> torch.Generator:
    """A CPU ``torch.Generator`` of its own, seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *purpose))


def seed_model_init(seed: int) -> None:
    """Seed torch's global RNG for building a model (the new head; a random backbone).

    ``base.seed`` itself, not a derived seed: the weights stay what they were before seeds
    were split by purpose, so existing frozen-feature caches of random backbones stay valid.
    """
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch's global RNG for training epoch ``epoch`` (1-based, over all phases) on
    DDP rank ``rank`` (ranks draw different dropout masks and augmentations)."""
    torch.manual_seed(derive_seed(seed, "epoch", epoch, rank))
