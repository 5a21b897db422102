"""The frozen judge: multinomial logistic regression, in float64, on frozen pretrained features.

Its objective (mean cross-entropy plus an L2 penalty on the weights, features standardised on
the training split) is strictly convex, so it has one optimum and L-BFGS from zero reaches it
whatever the machine: two CPUs, or two thread counts, may take different paths there, but
agree on the weights to the solver's tolerance and on nearly every prediction. The penalty is
chosen on the validation split, never the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

PENALTIES = (1e-3, 1e-2, 1e-1, 1.0)
TOLERANCE = 1e-10


@dataclass(frozen=True)
class LinearJudge:
    mean: np.ndarray  # (d,) feature standardisation, from the training split
    scale: np.ndarray  # (d,)
    weight: np.ndarray  # (d, classes)
    bias: np.ndarray  # (classes,)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The index of each row's most likely class."""
        return self.logits(features).argmax(axis=1)

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{name}": getattr(self, name) for name in ("mean", "scale", "weight", "bias")}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str) -> LinearJudge:
        return cls(*(np.asarray(tensors[f"{prefix}.{name}"], dtype=np.float64)
                     for name in ("mean", "scale", "weight", "bias")))


def fit(features: np.ndarray, labels: np.ndarray, classes: int, penalty: float) -> LinearJudge:
    x = np.asarray(features, dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    # The optimal weights lie in the span of the training rows (the penalty is on their norm),
    # so fit in that span's coordinates: n x rank instead of n x d, the same optimum.
    _, _, basis = np.linalg.svd((x - mean) / scale, full_matrices=False)
    z = (x - mean) / scale @ basis.T
    n, d = z.shape
    onehot = np.zeros((n, classes))
    onehot[np.arange(n), labels] = 1.0

    def objective(flat):
        weight, bias = flat[:d * classes].reshape(d, classes), flat[d * classes:]
        logits = z @ weight + bias
        log_norm = logsumexp(logits, axis=1, keepdims=True)
        loss = (log_norm[:, 0] - (logits * onehot).sum(axis=1)).mean() + penalty / 2 * (weight ** 2).sum()
        grad_logits = (np.exp(logits - log_norm) - onehot) / n
        grad = np.concatenate([(z.T @ grad_logits + penalty * weight).ravel(), grad_logits.sum(axis=0)])
        return loss, grad

    result = minimize(objective, np.zeros(d * classes + classes), jac=True, method="L-BFGS-B",
                      options={"maxiter": 5000, "gtol": TOLERANCE, "ftol": TOLERANCE})
    flat = result.x
    return LinearJudge(mean, scale, basis.T @ flat[:d * classes].reshape(d, classes), flat[d * classes:])


def fit_on_validation(train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray,
                      classes: int) -> tuple[LinearJudge, dict]:
    """The judge at the penalty (of :data:`PENALTIES`) whose judge does best on the validation
    split (ties: the stronger penalty), and each candidate's validation accuracy."""
    accuracies = {}
    judges = {}
    for penalty in PENALTIES:
        judges[penalty] = fit(train, train_labels, classes, penalty)
        accuracies[penalty] = float((judges[penalty].predict(val) == val_labels).mean()) if len(val) else 0.0
    best = max(PENALTIES, key=lambda p: (accuracies[p], p))
    return judges[best], {"penalty": best, "validation_accuracy": {str(p): a for p, a in accuracies.items()}}
