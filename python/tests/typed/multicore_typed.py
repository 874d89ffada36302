"""The multicore API with every annotation ``mypy --strict`` asks for."""

import time

from blitzen import MulticoreDispatcher, TaskError, TaskFailed


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def main() -> None:
    with MulticoreDispatcher(workers=2, memory="1GiB") as d:
        ids: list[int] = [d.run(square, i, timeout=5.0, cpus=1) for i in range(4)]
        results = d.get_results(ids, timeout=30.0)
        values = [r for r in results if not isinstance(r, TaskError)]
        squares: list[int] = d.map(square, range(3))
        for value in d.imap_unordered(nap, [0.01, 0.02]):
            print("napped", value + 0.0)
        d.cancel(d.run(nap, 10.0))
        failed = d.get_results(d.run(square, "not a number"))
        if isinstance(failed, TaskFailed):
            print("raised", failed.exception, failed.task_id, failed.host)
        print(values, squares, d.pending(), d.cancel_all(), d.worker_pids(timeout=5.0))


if __name__ == "__main__":
    main()
