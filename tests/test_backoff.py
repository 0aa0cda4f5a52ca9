import random

from daemon.backoff import Backoff


def test_delays_double_up_to_the_cap_with_bounded_jitter():
    backoff = Backoff(0.5, 4.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    nominal = [0.5, 1, 2, 4, 4, 4, 4, 4]
    for delay, expected in zip(delays, nominal):
        assert expected / 2 <= delay <= expected
    assert len(set(delays)) == len(delays), "jitter makes delays differ"
    backoff.reset()
    assert backoff.next_delay() <= 0.5
