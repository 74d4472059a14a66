"""The learner's loop: one concise report per failing exercise test.

A check's verdict (ExerciseFailure) is printed as its message alone: the traceback through the
checks and their arguments' whole arrays say nothing the message does not. A stub not written
yet is one line naming it and where it is. Anything else (your code raising outside a check's
call) keeps a short traceback, without the arrays. Tiny arrays run on one Numba thread (no pool
to wake); the kernel race check asks for more threads itself.
"""

import pytest

from exercises.checks.common import ExerciseFailure


@pytest.fixture(autouse=True)
def one_numba_thread():
    import minimobile
    previous = minimobile.get_num_threads()
    minimobile.set_num_threads(1)
    yield
    minimobile.set_num_threads(previous)


def _stub_location(excinfo):
    for entry in reversed(excinfo.traceback):
        path = str(entry.path)
        if "/exercises/" in path and "/checks/" not in path and "/tests/" not in path:
            return f"{entry.path.name}:{entry.lineno + 1}"
    return ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.excinfo is None or call.when != "call":
        return
    excinfo = call.excinfo
    if excinfo.errisinstance(ExerciseFailure):
        report.longrepr = str(excinfo.value)
    elif excinfo.errisinstance(NotImplementedError) and str(excinfo.value)[:2] == "ex":
        where = _stub_location(excinfo)
        report.longrepr = (f"NotImplementedError: {excinfo.value}"
                           + (f" ({where}: not written yet)" if where else ""))
    else:
        report.longrepr = excinfo.getrepr(style="short", funcargs=False, showlocals=False)
