"""`hymoe chat` as a user drives it: commands, settings, Ctrl-C during a reply."""
import os
import signal
import subprocess
import sys
import time

import pytest

from hymoe.errors import HymoeError
from hymoe.repl import command


class FakeSession:
    def __init__(self):
        from hymoe.engine.sampler import SamplingParams

        self.params, self.system, self.resets = SamplingParams(), None, []

    def reset(self, system=None):
        self.system = system if system is not None else self.system
        self.resets.append(system)


def test_commands_change_the_session_and_never_reach_the_model():
    s = FakeSession()
    assert "/system" in command(s, "/help")
    assert command(s, "/set temperature 0.7") == "(temperature = 0.7)" and s.params.temperature == 0.7
    command(s, "/set max_tokens 12")
    assert s.params.max_new_tokens == 12
    command(s, "/system You are terse.")
    assert s.system == "You are terse." and s.resets == ["You are terse."]
    assert "terse" in command(s, "/show") and "max_tokens 12" in command(s, "/show")
    assert command(s, "/exit") is None and command(s, "/bye") is None


@pytest.mark.parametrize("line, message", [("/set top_p 2", "out of range"), ("/set temperature hot", "a number"),
                                           ("/set colour blue", "unknown setting"), ("/frobnicate", "unknown command")])
def test_bad_commands_say_why(line, message):
    with pytest.raises(HymoeError, match=message):
        command(FakeSession(), line)


@pytest.mark.parametrize("inherited", [signal.SIG_DFL, signal.SIG_IGN])
def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(tmp_path, inherited):
    """SIGINT while a reply streams: the reply stops, the program stays, the next line is answered;
    also when the chat starts with SIGINT ignored (a background job of a non-interactive shell)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "hymoe.cli", "chat", "--max-new-tokens", "900", "--ignore-eos"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, inherited))
    proc.stdin.write("And God said\n")
    proc.stdin.flush()
    proc.stdout.read(40)  # the reply is streaming
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    out, err = proc.communicate("/set max_tokens 5\nonce more\n/exit\n", timeout=240)
    assert proc.returncode == 0, err
    assert "stopped;" in err and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("(") and "tokens" in line]
    assert len(lines) == 2 and lines[1].startswith("(5 tokens")  # the second reply ran, with the new setting
