"""Interactive use: functions defined at the REPL (``python -i``) and in notebook cells
(``jupyter nbconvert --execute``, a real kernel) run on multicore and on a cluster, and Ctrl-C
(a notebook's interrupt) while waiting cancels the tasks waited for, not the session."""

import json
import os
import signal
import subprocess
import sys
import time

import nbformat
from jupyter_client.manager import start_new_kernel

from conftest import free_port
from test_distributed import SECRET, start_client, start_server


def repl(processes, commands):
    """A ``python -i`` reading `commands` from its stdin, as a user would type them."""
    p = processes.start(["-i", "-u", "-q"], stdin=subprocess.PIPE)
    p.stdin.write(commands)
    p.stdin.flush()
    return p


def read_until(stream, text, within=60):
    seen = ""
    deadline = time.monotonic() + within
    while text not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} within {within} s; got {seen!r}")
        line = stream.readline()
        if not line:
            raise AssertionError(f"the stream ended before {text!r}; got {seen!r}")
        seen += line
    return seen


def test_a_function_defined_at_the_repl_runs_on_multicore_and_on_a_cluster(processes):
    port = free_port()
    start_server(processes, port)
    start_client(processes, port)
    p = repl(
        processes,
        "from blitzen import MulticoreDispatcher\n"
        "from blitzen.distributed import DistributedDispatcher\n"
        "def cube(x):\n"
        "    return x ** 3\n"
        "\n"
        "d = MulticoreDispatcher(workers=2)\n"
        "print('multicore', d.map(cube, [1, 2, 3]))\n"
        f"c = DistributedDispatcher('127.0.0.1', {port}, secret={SECRET!r})\n"
        "print('cluster', c.map(cube, [1, 2, 3]))\n",
    )
    out, err = p.communicate(timeout=120)
    assert "multicore [1, 8, 27]" in out, (out, err)
    assert "cluster [1, 8, 27]" in out, (out, err)


def test_ctrl_c_at_the_repl_cancels_the_tasks_waited_for_not_the_session(processes):
    p = repl(
        processes,
        "import time\n"
        "from blitzen import MulticoreDispatcher\n"
        "d = MulticoreDispatcher(workers=1)\n"
        "t = d.run(time.sleep, 120)\n"
        "print('waiting'); d.get_results(t)\n"
        "print('after', type(d.get_results(t, timeout=30)).__name__)\n"
        "print('again', d.map(abs, [-1, -2]))\n",
    )
    read_until(p.stdout, "waiting")
    # The wait has begun (it follows the print at once); Ctrl-C is SIGINT to the REPL.
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGINT)
    out = read_until(p.stdout, "again")
    _, err = p.communicate(timeout=60)
    assert "after Cancelled" in out, (out, err)
    assert "again [1, 2]" in out, (out, err)
    assert "KeyboardInterrupt" in err, err


def notebook(cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def outputs(nb):
    """Each cell's printed text."""
    texts = []
    for cell in nb.cells:
        texts.append("".join(o.get("text", "") for o in cell.get("outputs", [])))
    return texts


def test_a_notebook_runs_its_cells_functions_on_multicore_and_on_a_cluster(processes, tmp_path):
    port = free_port()
    start_server(processes, port)
    start_client(processes, port)
    nb = notebook(
        [
            "from blitzen import MulticoreDispatcher\n"
            "from blitzen.distributed import DistributedDispatcher",
            "def square_and_say(x):\n"
            "    print(f'Finished after {x}')\n"
            "    return x * x",
            "d = MulticoreDispatcher(workers=2)\n"
            "print('results', d.map(square_and_say, range(4)))",
            f"c = DistributedDispatcher('127.0.0.1', {port}, secret={SECRET!r})\n"
            "print('cluster', c.map(square_and_say, range(3)))",
            "d.shutdown()\nc.shutdown()",
        ]
    )
    path = tmp_path / "cells.ipynb"
    nbformat.write(nb, path)
    run = subprocess.run(
        [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", str(path),
         "--output", "executed.ipynb", "--ExecutePreprocessor.timeout=120"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    texts = outputs(nbformat.read(tmp_path / "executed.ipynb", as_version=4))
    assert "results [0, 1, 4, 9]" in texts[2], texts
    # What the tasks printed is in the cell that ran them.
    assert all(f"Finished after {x}" in texts[2] for x in range(4)), texts
    assert "cluster [0, 1, 4]" in texts[3], texts
    assert all(f"Finished after {x}" in texts[3] for x in range(3)), texts


def test_interrupting_a_kernel_cancels_the_cells_tasks_not_the_kernel():
    km, kc = start_new_kernel(kernel_name="python3", env=dict(os.environ))
    try:
        def run(code, timeout=60):
            texts = []
            hook = lambda msg: texts.append(msg["content"].get("text", ""))
            reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
            return reply["content"], "".join(texts)

        status, _ = run(
            "import time\n"
            "from blitzen import MulticoreDispatcher\n"
            "d = MulticoreDispatcher(workers=1)\n"
            "t = d.run(time.sleep, 120)"
        )
        assert status["status"] == "ok", status
        # stop_on_error=False: the interrupt's error must not make the kernel abort the next request,
        # which it does for requests that arrive soon after an error otherwise.
        kc.execute("d.get_results(t)", stop_on_error=False)
        time.sleep(1)
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=60)["content"]
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
        status, text = run("print(type(d.get_results(t, timeout=30)).__name__, d.map(abs, [-3]))")
        assert status["status"] == "ok", status
        assert "Cancelled [3]" in text, text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
