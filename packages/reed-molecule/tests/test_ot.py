"""Equivariant OT alignment of the prior never increases the distance to the data."""

import numpy as np
import pytest

from reed_molecule.ot import (
    OT_KINDS,
    align_prior,
    centre,
    centred_gaussian,
    hungarian,
    kabsch,
    squared_distance,
)


@pytest.mark.parametrize("kind", OT_KINDS)
def test_alignment_never_increases_distance(kind):
    rng = np.random.default_rng(0)
    for trial in range(20):
        counts = rng.integers(1, 20, size=16)
        mask = np.arange(20)[None] < counts[:, None]
        x0 = centred_gaussian(mask, 1.5, rng)
        x1 = centred_gaussian(mask, 1.0, rng)
        aligned = align_prior(x1, x0, mask, kind, rounds=2)
        before, after = squared_distance(x1, x0, mask), squared_distance(aligned, x0, mask)
        assert (after <= before + 1e-4).all(), (kind, trial)
        assert np.allclose(aligned[~mask], 0.0)
        # still centred and the same point cloud up to rotation: pairwise distance multiset kept
        m = mask[..., None]
        assert np.abs((aligned * m).sum(1)).max() < 1e-4


def test_alignment_is_a_rotation_and_permutation_of_the_prior():
    rng = np.random.default_rng(1)
    mask = np.ones((1, 12), bool)
    x0, x1 = centred_gaussian(mask, 1.5, rng), centred_gaussian(mask, 1.0, rng)
    y = align_prior(x1, x0, mask)[0]
    d = lambda p: np.sort(np.linalg.norm(p[:, None] - p[None], axis=-1).ravel())  # noqa: E731
    assert np.allclose(d(y), d(x1[0]), atol=1e-4)
    assert squared_distance(y[None], x0, mask)[0] < squared_distance(x1, x0, mask)[0]


def test_kabsch_recovers_a_rotation_and_hungarian_a_permutation():
    rng = np.random.default_rng(2)
    x = centre(rng.standard_normal((1, 10, 3)).astype(np.float32), np.ones((1, 10), bool))[0]
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.linalg.det(q))  # proper rotation
    R = kabsch(x, x @ q.T)
    assert np.allclose(R, q, atol=1e-4)
    perm = rng.permutation(10)
    assert (x[perm][hungarian(x[perm], x)] == x).all()


def test_unknown_ot_kind_is_an_error():
    mask = np.ones((1, 3), bool)
    with pytest.raises(ValueError, match="flow.ot"):
        align_prior(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)), mask, "sinkhorn")
