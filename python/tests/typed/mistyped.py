"""Mistakes the stubs catch: each line marked below is an error under ``mypy --strict``."""

from blitzen import MulticoreDispatcher


def square(x: int) -> int:
    return x * x


d = MulticoreDispatcher(workers="four")  # error: workers
task: str = d.run(square, 3)  # error: run returns an int
d.run(square, 3, timeout="soon")  # error: timeout
names: list[str] = d.map(square, [1, 2])  # error: map returns what square returns
d.cancel("all")  # error: task ids

import blitzen  # noqa: E402

ex = blitzen.Executor(max_workers="two")  # error: max_workers
word: str = ex.submit(square, 2).result()  # error: the future holds what square returns
ex.shutdown(cancel_futures="yes")  # error: cancel_futures
