"""`streaming.in_order`: results in submission order with a bounded read-ahead."""

from concurrent.futures import ThreadPoolExecutor

from fpn_geo.streaming import in_order


class _Future:
    def __init__(self, value, log):
        self.value, self.log, self.cancelled = value, log, False

    def result(self):
        self.log.append(("result", self.value))
        return self.value

    def cancel(self):
        self.cancelled = True


def test_results_come_in_order_with_a_bounded_read_ahead():
    with ThreadPoolExecutor(4) as pool:
        assert list(in_order(lambda i: pool.submit(lambda: i * i), range(20), 3)) == [i * i for i in range(20)]
    log, futures = [], []

    def submit(i):
        log.append(("submit", i))
        futures.append(_Future(i, log))
        return futures[-1]

    it = in_order(submit, range(10), 3)
    assert [next(it), next(it)] == [0, 1]
    assert [v for k, v in log if k == "submit"] == [0, 1, 2, 3, 4]  # 3 ahead, the next submitted before each yield
    it.close()  # the consumer stops: what is still out is cancelled, nothing more is submitted
    assert [f.value for f in futures if f.cancelled] == [2, 3, 4] and len(futures) == 5
