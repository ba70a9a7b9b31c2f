import pytest

from common.core.states import JobStatus as S
from common.core.states import is_terminal, progress_key, should_apply


def apply(cur, tok, att, upd, utok, uatt):
    return should_apply(
        current_status=cur, current_token=tok, current_attempts=att,
        update_status=upd, update_token=utok, update_attempt=uatt,
    )


@pytest.mark.parametrize("status", [S.SUCCESS, S.FAILED, S.CANCELLED])
def test_terminal_never_changes(status):
    assert is_terminal(status)
    for update in (S.RUNNING, S.RETRYING, S.SUCCESS, S.FAILED):
        assert not apply(status, 1, 1, update, 1, 2)


def test_forward_path_of_one_dispatch():
    assert apply(S.QUEUED, 1, 0, S.RUNNING, 1, 1)
    assert apply(S.RUNNING, 1, 1, S.RETRYING, 1, 1)
    assert apply(S.RETRYING, 1, 1, S.RUNNING, 1, 2)
    assert apply(S.RUNNING, 1, 2, S.SUCCESS, 1, 2)


def test_duplicates_and_late_messages_do_not_move_backwards():
    assert not apply(S.RUNNING, 1, 1, S.RUNNING, 1, 1)      # duplicate
    assert not apply(S.RETRYING, 1, 1, S.RUNNING, 1, 1)     # late RUNNING of the same attempt
    assert not apply(S.RUNNING, 1, 2, S.RETRYING, 1, 1)     # late RETRYING of attempt 1
    assert not apply(S.RUNNING, 1, 2, S.RUNNING, 1, 1)


def test_stale_dispatch_token_is_fenced_off():
    assert not apply(S.QUEUED, 2, 1, S.SUCCESS, 1, 1)
    assert not apply(S.RUNNING, 2, 2, S.FAILED, 1, 2)


def test_progress_key_orders_attempts_before_phases():
    assert progress_key(S.RETRYING, 1) < progress_key(S.RUNNING, 2)
    assert progress_key(S.RUNNING, 1) < progress_key(S.SUCCESS, 1)
