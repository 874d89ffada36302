"""joblib's "blitzen" backend: ``joblib.Parallel`` and scikit-learn's ``n_jobs`` on Blitzen's
workers, on a local pool and on a real cluster."""

import os

import joblib
import pytest
from joblib import Parallel, delayed, parallel_config

import blitzen
import blitzen.joblib  # noqa: F401  (registers the backend)

from calls import array_facts, square
from test_distributed import SECRET, cluster  # noqa: F401  (the module's cluster: its port)
from test_shared import binary_cluster


@pytest.fixture(params=["local", "cluster"])
def backend(request):
    """The backend's keywords: a local pool of two workers, or the cluster."""
    if request.param == "local":
        yield {"max_workers": 2}
    else:
        port = request.getfixturevalue("cluster")
        yield {"server": f"127.0.0.1:{port}", "secret": SECRET}
    # Before the cluster stops: the executors the backend made leave it.
    blitzen.joblib.shutdown()


def pid_of(_):
    return os.getpid()


def test_parallel_runs_on_the_workers_in_order(backend):
    with parallel_config(backend="blitzen", n_jobs=-1, **backend):
        assert Parallel()(delayed(square)(i) for i in range(200)) == [i * i for i in range(200)]
        pids = set(Parallel(batch_size=1)(delayed(pid_of)(i) for i in range(20)))
        assert os.getpid() not in pids, "the calls ran on Blitzen's workers"
        streamed = Parallel(return_as="generator")(delayed(square)(i) for i in range(50))
        assert list(streamed) == [i * i for i in range(50)]


def test_n_jobs_minus_one_is_every_worker_of_the_pool_or_cluster(backend):
    # The local pool has two workers; so has the cluster's one agent.
    with parallel_config(backend="blitzen", **backend):
        assert joblib.effective_n_jobs(-1) == 2
        assert joblib.effective_n_jobs(-2) == 1
        assert joblib.effective_n_jobs(3) == 3


def test_a_failing_call_raises_its_own_exception(backend):
    with parallel_config(backend="blitzen", n_jobs=2, **backend):
        with pytest.raises(ZeroDivisionError):
            Parallel()(delayed(divmod)(1, i) for i in (3, 2, 1, 0))


def test_grid_search_finds_what_loky_finds(backend):
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    grid = {"C": [0.01, 0.1, 1.0, 10.0], "fit_intercept": [True, False]}

    def search():
        found = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=5, n_jobs=-1)
        return found.fit(X, y)

    with parallel_config(backend="loky"):
        expected = search()
    with parallel_config(backend="blitzen", **backend):
        got = search()
    assert got.best_params_ == expected.best_params_
    assert got.best_score_ == pytest.approx(expected.best_score_)


def test_a_large_array_is_shared_not_pickled_into_every_batch():
    import numpy

    big = numpy.arange(1 << 20, dtype=numpy.float64)  # 8 MiB
    # n_jobs=2 on a pool of one worker: joblib runs n_jobs=1 in this process instead.
    total = float(big.sum())
    with parallel_config(backend="blitzen", max_workers=1, n_jobs=2):
        seen = Parallel(batch_size=1)(delayed(array_facts)(big, i) for i in range(10))
    assert [s[3] for s in seen] == [total + i for i in range(10)]
    assert len({(pid, ident) for pid, ident, _, _ in seen}) == 1, "one object on the worker"
    assert seen[0][0] != os.getpid(), "run on the pool's one worker"
    assert not any(s[2] for s in seen), "handed to the calls read-only"
    small = numpy.arange(10.0)
    with parallel_config(backend="blitzen", max_workers=1, n_jobs=2):
        (facts,) = Parallel()(delayed(array_facts)(small, 0) for _ in range(1))
    assert facts[2], "a small array travels in its batch, the worker's own"
    with parallel_config(backend="blitzen", max_workers=1, n_jobs=2, share_at=None):
        seen = Parallel(batch_size=1)(delayed(array_facts)(big, i) for i in range(3))
    assert all(s[2] for s in seen), "share_at=None: pickled into each batch"
    with pytest.raises(ValueError, match="share_at"):
        with parallel_config(backend="blitzen", share_at=-1):
            Parallel()(delayed(square)(i) for i in range(2))
    blitzen.joblib.shutdown()


def test_a_large_array_crosses_to_an_agent_once(processes):
    import numpy

    port, shared_bytes_sent = binary_cluster(processes)
    big = numpy.arange(1 << 21, dtype=numpy.float64)  # 16 MiB
    with parallel_config(backend="blitzen", server=f"127.0.0.1:{port}", secret=SECRET):
        seen = Parallel(batch_size=1)(delayed(array_facts)(big, i) for i in range(20))
    blitzen.joblib.shutdown()
    assert [s[3] for s in seen] == [float(big.sum()) + i for i in range(20)]
    sent = shared_bytes_sent()
    assert big.nbytes <= sent < 2 * big.nbytes, (sent, big.nbytes)


def test_a_keyword_the_backend_does_not_know_is_refused():
    with pytest.raises(TypeError, match="sever"):
        with parallel_config(backend="blitzen", sever="127.0.0.1:7464"):
            Parallel()(delayed(square)(i) for i in range(2))


def test_an_executor_of_ones_own_serves_the_backend():
    with blitzen.Executor(max_workers=2) as ex:
        with parallel_config(backend="blitzen", executor=ex, n_jobs=-1):
            assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]
        assert ex.submit(square, 3).result() == 9, "the executor is left running"
