"""The compiled kernels and their plain-Python run (no numba, or PREDLAT_NO_JIT=1) give
the same forecasts: the fine forecast to the bit, RLS to rounding (its interpreted
top-up decomposes with LAPACK, the compiled one with Jacobi sweeps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from predlat.predict.jit import COMPILED

SCRIPT = """
import json, numpy as np
from predlat.predict.colocation import DeviceLoad
from predlat.predict.features import Oversubscription
from predlat.predict.fine_forecast import Fill, batch_row, fine_latencies, kernel_rows
from predlat.predict.regressors import RLS

out = {}
for ov in (None, Oversubscription(1, 2)):
    state = DeviceLoad(0.02, ov)
    state.advance(0.0)
    starts, feats = [0.0, 0.004, 0.006], [(1.0, 0.6, 0.3), (1.0, 0.2, 0.9), (1.0, 0.5, 0.5)]
    c_starts = []
    for s, f in zip(starts, feats):
        state.advance(s)
        c_starts.append(tuple(state.cum))
        state.start(f)
    beta = (0.3, 0.2, 0.1, 0.4)
    rows = [batch_row(s, 0.01, 1.0, beta, f) for s, f in zip(starts, feats)]
    cand = [batch_row(0.008, 0.02, 1.1, beta, (1.0, 0.4, 0.4))]
    rows = kernel_rows(rows + cand)
    for revert in (0.0, 1.0):
        fill = Fill(revert, 2.5, 0.4, 0.3, 0.01, 0.8)
        lats = fine_latencies(0.008, state, kernel_rows(c_starts, 4), rows, ov, fill, 6, 1e-3)
        out[f"{ov is not None}-{revert}"] = lats
rng = np.random.default_rng(0)
X = rng.uniform(0, 2, size=(300, 4))
X[:, 0] = 1.0
X[150:, 3] = 0.0  # a direction no longer excited: the prior tops it up
y = X @ [1.0, 0.5, -0.2, 0.3] + rng.normal(0, 0.05, size=300)
rls = RLS(4, lam=0.95, prior=1.0, huber=3.0, check_every=8).fit(X[:50], y[:50])
for x, t in zip(X[50:], y[50:]):
    rls.learn_one(x.tolist(), float(t))
out["rls"] = rls.coef
print(json.dumps(out))
"""


def _run(no_jit: bool) -> dict:
    env = {**os.environ, "PREDLAT_NO_JIT": "1" if no_jit else "0"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(not COMPILED, reason="numba is not installed: nothing compiled")
def test_compiled_and_interpreted_kernels_agree():
    compiled, interpreted = _run(False), _run(True)
    rls_c, rls_i = compiled.pop("rls"), interpreted.pop("rls")
    assert compiled == interpreted  # the fine forecast, to the bit
    assert len(compiled) == 4 and all(v[-1] > 0.02 for v in compiled.values())
    assert np.allclose(rls_c, rls_i, rtol=1e-9, atol=1e-12)
