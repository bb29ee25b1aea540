"""Shared pieces of the chart and Dockerfile tests (test_chart.py, test_dockerfile.py): a
passed/failed tally that runs each check and prints one line for it, and assertion helpers."""


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, fn, *args):
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - any exception is a failed check, reported
            self.failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
        else:
            self.passed += 1
            print(f"ok   {name}")


def fail(msg):
    raise AssertionError(msg)


def expect(cond, msg):
    if not cond:
        fail(msg)
