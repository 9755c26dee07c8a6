"""The protocol of the fuzz workers (tests/fuzz_*_worker.py) with their parent tests: before each
case `case I`, then `ok` or `refused: <one line>` (a HymoeError). Anything else escapes: a
traceback, a signal or a hang, which the parent reports with the case number."""
from hymoe.errors import HymoeError


def run_cases(count: int, case) -> None:
    for i in range(count):
        print(f"case {i}", flush=True)
        try:
            case()
            print("ok", flush=True)
        except HymoeError as err:
            message = str(err)
            assert "\n" not in message, f"a multi-line error: {message!r}"
            print(f"refused: {message}", flush=True)
