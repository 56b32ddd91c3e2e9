"""core.chat: request parameters, message checks and the request hash (the cache key and provenance)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmlab.core.chat import ChatParams, check_messages, request_hash

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]


def test_request_hash_is_stable_and_sensitive_to_every_part():
    h = request_hash("m", MSGS, ChatParams(seed=1))
    assert h == request_hash("m", [dict(m) for m in MSGS], ChatParams(seed=1)) and len(h) == 64
    others = {request_hash("m2", MSGS, ChatParams(seed=1)), request_hash("m", MSGS[1:], ChatParams(seed=1)),
              request_hash("m", MSGS, ChatParams(seed=2)), request_hash("m", MSGS, ChatParams(seed=1, n=2))}
    assert h not in others and len(others) == 4


@pytest.mark.parametrize("bad, needle", [(dict(n=0), "n must"), (dict(temperature=-1), "temperature"),
                                         (dict(top_p=0), "top_p"), (dict(max_tokens=0), "max_tokens"),
                                         (dict(logprobs=-1), "logprobs")])
def test_bad_params_name_the_field(bad, needle):
    with pytest.raises(ValueError, match=needle):
        ChatParams(**bad)


def test_bad_messages_name_the_message():
    assert check_messages(MSGS) is MSGS
    for bad in ([], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 3}]):
        with pytest.raises(ValueError, match="messages"):
            check_messages(bad)


def test_chat_imports_no_torch():
    code = "import sys, lmlab.core.chat; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
