"""The Executor with every annotation ``mypy --strict`` asks for: futures, ``map``, asyncio."""

import asyncio
import concurrent.futures

import blitzen
from blitzen.executor import Future


def square(x: int) -> int:
    return x * x


def setup(name: str) -> None:
    print("worker ready:", name)


async def awaited(ex: blitzen.Executor) -> int:
    loop = asyncio.get_running_loop()
    from_loop: int = await loop.run_in_executor(ex, square, 3)
    return await ex.submit(square, 4) + from_loop


def main() -> None:
    with blitzen.Executor(max_workers=2, initializer=setup, initargs=("model",)) as ex:
        f: Future[int] = ex.submit(square, 7)
        g: concurrent.futures.Future[int] = ex.submit(square, f)
        squares: list[int] = list(ex.map(square, range(10), chunksize=3, timeout=60.0))
        weights: blitzen.Shared = ex.share(list(range(1000)))
        total: Future[int] = ex.submit(sum, weights)
        done, _ = concurrent.futures.wait([f, g, total], timeout=60.0)
        print(f.result(), g.result(timeout=60.0), squares, len(done) - 1, ex._max_workers)
        print("shared", total.result(), weights.nbytes > 1000)
        print(asyncio.run(awaited(ex)))


if __name__ == "__main__":
    main()
