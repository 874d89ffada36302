"""The cluster API with every annotation ``mypy --strict`` asks for."""

import sys

from blitzen import Lost, TimedOut
from blitzen.distributed import DEFAULT_PORT, DistributedDispatcher
from blitzen.utils import get_local_ip


def cube(x: int) -> int:
    return x**3


def main(port: int = DEFAULT_PORT) -> None:
    d = DistributedDispatcher(get_local_ip(), port, secret=b"0123456789abcdef0123", echo=True)
    try:
        ids = [d.run(cube, i, timeout=7, resources={"gpu": 0}) for i in range(3)]
        for r in d.join():
            if isinstance(r, (TimedOut, Lost)):
                print("did not finish:", r.message, file=sys.stderr)
            else:
                print(r)
        print(len(ids), d.server_ip, d.port)
    finally:
        d.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PORT)
