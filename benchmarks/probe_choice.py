"""Ridge or one-vs-rest logistic regression for the linear-probe ceiling (hyperbolic.evaluation.probe)?

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/probe_choice.py --noise 5    # ~2 min
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/probe_choice.py --noise 10

Simulated CLAP-like embeddings at the product's scale: 527 random unit class vectors in 512
dimensions, Zipf-like class frequencies (p ~ 1/rank^0.8), 1-3 labels per clip, a clip = the sum of
its labels' vectors plus isotropic noise, L2-normalised; 18,000 training and 3,000 eval clips.
Ridge fits all 527 classes; logistic regression (lbfgs) fits every 18th class (29 classes across
the frequency range) and its time is extrapolated to 527. mAP over the classes with a positive
on both sides. Measured on the 2-core machine (shared), 1 thread:

    noise 5:  RidgeCV (alpha 10) 11.5 s, mAP 0.262; Ridge(10) 2.4 s, mAP 0.262
              logreg C=1: 21.6 s for 29 classes (-> ~390 s for 527), mAP 0.267 vs ridge 0.282 on them
              logreg C=10: 28.4 s (-> ~520 s), mAP 0.261 vs ridge 0.282
    noise 10: RidgeCV (alpha 10) 17.4 s, mAP 0.026; logreg C=1: ~310 s, mAP 0.0370 vs ridge 0.0371
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402

from hyperbolic.evaluation.probe import ALPHAS  # noqa: E402


def simulate(rng, n, classes, freq, noise):
    C, d = classes.shape
    k = rng.choice([1, 2, 3], size=n, p=[0.5, 0.35, 0.15])
    y = np.zeros((n, C), bool)
    for i in range(n):
        y[i, rng.choice(C, size=k[i], replace=False, p=freq)] = True
    x = y @ classes + noise * rng.standard_normal((n, d)) / np.sqrt(d) * np.sqrt(k)[:, None]
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def mean_ap(scores, targets, cols):
    return float(np.mean([average_precision_score(targets[:, j], scores[:, j]) for j in cols]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--noise", type=float, default=5.0, help="noise norm per label, relative to a class vector")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    n_train, n_eval, d, C = 18000, 3000, 512, 527
    freq = 1.0 / np.arange(1, C + 1) ** 0.8
    freq /= freq.sum()
    classes = rng.standard_normal((C, d))
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    xt, yt = simulate(rng, n_train, classes, freq, args.noise)
    xe, ye = simulate(rng, n_eval, classes, freq, args.noise)
    cols = [j for j in range(C) if yt[:, j].any() and ye[:, j].any()]
    print(f"cosine to the true class vectors: mAP {mean_ap(xe @ classes.T, ye, cols):.4f} over {len(cols)} classes")
    start = time.time()
    ridge = RidgeCV(alphas=ALPHAS).fit(xt, yt.astype(float))
    ridge_scores = ridge.predict(xe)
    print(f"RidgeCV (alpha {ridge.alpha_:g}): {time.time() - start:.1f} s, mAP {mean_ap(ridge_scores, ye, cols):.4f}")
    start = time.time()
    fixed = Ridge(alpha=ridge.alpha_).fit(xt, yt.astype(float)).predict(xe)
    print(f"Ridge (alpha {ridge.alpha_:g}): {time.time() - start:.1f} s, mAP {mean_ap(fixed, ye, cols):.4f}")
    some = cols[::18]
    for c in (1.0, 10.0):
        start, scores = time.time(), np.zeros((n_eval, C))
        for j in some:
            scores[:, j] = LogisticRegression(C=c, max_iter=1000).fit(xt, yt[:, j]).decision_function(xe)
        took = time.time() - start
        print(f"logistic C={c:g}: {took:.1f} s for {len(some)} classes (-> {took * C / len(some):.0f} s for {C}), "
              f"mAP {mean_ap(scores, ye, some):.4f} vs ridge {mean_ap(ridge_scores, ye, some):.4f} on the same classes")


if __name__ == "__main__":
    main()
