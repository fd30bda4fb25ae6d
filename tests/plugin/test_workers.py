"""The docks' worker helpers: workers run torch with one thread fewer than the window's, and end cleanly."""

from __future__ import annotations

import pytest
import torch

from napari_unet.plugin._workers import generator_worker, start_worker

pytestmark = pytest.mark.viewer


@pytest.fixture
def three_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def test_a_worker_leaves_a_core_to_the_window_and_its_generator_is_closed(qtbot, three_threads):
    seen, closed = [], []

    def steps():
        try:
            while True:
                seen.append(torch.get_num_threads())
                yield len(seen)
        finally:
            closed.append(True)

    worker = generator_worker(steps())
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        worker.yielded.connect(lambda count: count >= 3 and worker.quit())
        start_worker(worker)
    qtbot.waitUntil(lambda: closed == [True], timeout=5_000)
    assert set(seen) == {2}, "the worker runs torch with one thread fewer"
    assert torch.get_num_threads() == 3, "the window's thread keeps its setting"
