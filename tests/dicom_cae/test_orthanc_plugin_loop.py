"""The plugin's worker thread against the order in which Orthanc starts, without timing luck.

Orthanc loads its plugins (and so starts the plugin's thread) before it answers its REST API to
them; a study queued before a restart must wait for ORTHANC_STARTED. Asked too early, Orthanc's
REST API listed no instance and the study was marked done with nothing derived (seen in the
SIGKILL test of test_orthanc_plugin.py only when Orthanc started slowly). Here the Orthanc SDK
module the plugin is handed is a small stand-in that answers as Orthanc does before it has started,
so the order is the test's to choose; the real Orthanc runs in test_orthanc_plugin.py."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from dicom_cae import orthanc_plugin


class NotStartedOrthanc:
    """The parts of the `orthanc` module the worker thread uses, answering as an Orthanc whose
    REST API is not up yet: every list empty."""

    ChangeType = SimpleNamespace(STABLE_STUDY=1, ORTHANC_STARTED=2, ORTHANC_STOPPED=3, NEW_INSTANCE=4)

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.uris: list[str] = []
        self.warnings: list[str] = []
        self.answer = "[]"

    def RestApiGet(self, uri: str) -> str:  # noqa: N802 (the SDK's name)
        self.uris.append(uri)
        self.asked.set()
        if self.answer is None:
            raise RuntimeError("Orthanc's REST API is not answering")
        return self.answer

    def LogWarning(self, text: str) -> None:  # noqa: N802
        self.warnings.append(text)

    LogError = LogWarning


def test_a_study_queued_before_orthanc_has_started_waits_for_it(tmp_path):
    sdk = NotStartedOrthanc()
    plugin = orthanc_plugin.Plugin(sdk, orthanc_plugin.Options(data_dir=str(tmp_path)))
    plugin.queue.add("study-queued-before-a-restart")
    plugin.thread.start()
    try:
        plugin.on_change(sdk.ChangeType.STABLE_STUDY, None, "study-stable-while-starting")
        # Not started: the thread must not ask Orthanc anything (it would hear "no instance").
        assert not sdk.asked.wait(4.0), f"asked Orthanc before it started: {sdk.uris}"
        assert plugin.queue.state("study-queued-before-a-restart") == orthanc_plugin.PENDING
        assert plugin.queue.state("study-stable-while-starting") == orthanc_plugin.PENDING

        sdk.answer = None  # started, but the study's listing fails: it stays queued, said as a problem
        plugin.on_change(sdk.ChangeType.ORTHANC_STARTED, None, "")
        assert sdk.asked.wait(30.0), "the queued study was never taken once Orthanc had started"
    finally:
        plugin.on_change(sdk.ChangeType.ORTHANC_STOPPED, None, "")
        plugin.thread.join(30.0)
    assert not plugin.thread.is_alive()
    assert sdk.uris[0] == "/studies/study-queued-before-a-restart/instances"
    assert plugin.queue.state("study-queued-before-a-restart") == orthanc_plugin.PROBLEM
    assert any("stays queued" in w for w in sdk.warnings)


def test_a_plugin_stopped_before_orthanc_started_ends_its_thread_without_asking(tmp_path):
    sdk = NotStartedOrthanc()
    plugin = orthanc_plugin.Plugin(sdk, orthanc_plugin.Options(data_dir=str(tmp_path)))
    plugin.queue.add("study")
    plugin.thread.start()
    plugin.on_change(sdk.ChangeType.ORTHANC_STOPPED, None, "")
    plugin.thread.join(30.0)
    assert not plugin.thread.is_alive() and sdk.uris == []
    assert plugin.queue.state("study") == orthanc_plugin.PENDING


def test_the_plugins_thread_runs_at_the_lowest_priority_and_orthancs_own_threads_do_not(tmp_path):
    """What the thread asks of Orthanc (copying originals out, storing derived instances) runs in
    it: at nice 19, Orthanc's receiving comes first. Only that thread: Orthanc's others keep theirs."""
    import os

    sdk = NotStartedOrthanc()
    plugin = orthanc_plugin.Plugin(sdk, orthanc_plugin.Options(data_dir=str(tmp_path)))
    before = os.getpriority(os.PRIO_PROCESS, 0)
    plugin.thread.start()
    try:
        for _ in range(100):
            if plugin.thread.native_id and os.getpriority(os.PRIO_PROCESS, plugin.thread.native_id) == 19:
                break
            threading.Event().wait(0.05)
        assert os.getpriority(os.PRIO_PROCESS, plugin.thread.native_id) == orthanc_plugin.NICE == 19
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    finally:
        plugin.on_change(sdk.ChangeType.ORTHANC_STOPPED, None, "")
        plugin.thread.join(30.0)


class ReceivingOrthanc(NotStartedOrthanc):
    """Started; stores what the plugin posts and tells the plugin of every new instance, as
    Orthanc does (NEW_INSTANCE, after the store, from its own thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.plugin = None
        self.held: set[bytes] = set()

    def RestApiPost(self, uri: str, data: bytes) -> str:  # noqa: N802
        import json

        if data in self.held:
            return json.dumps({"ID": "x", "Status": "AlreadyStored"})
        self.held.add(data)
        threading.Timer(0.05, self.plugin.on_change, (self.ChangeType.NEW_INSTANCE, None, "x")).start()
        return json.dumps({"ID": "x", "Status": "Success"})

    def modality_sends(self) -> None:
        self.plugin.on_change(self.ChangeType.NEW_INSTANCE, None, "from-a-modality")


def test_the_plugin_waits_while_a_modality_sends_and_not_for_its_own_stores(tmp_path, monkeypatch):
    """Orthanc's receiving first: an instance from outside makes the worker thread wait until
    the arrivals stop for RECEIVING_QUIET_S; the instances dicom-cae stores itself (and those
    Orthanc held already) do not; and a sender that never stops does not starve the plugin."""
    import time

    monkeypatch.setattr(orthanc_plugin, "RECEIVING_QUIET_S", 0.5)
    sdk = ReceivingOrthanc()
    plugin = sdk.plugin = orthanc_plugin.Plugin(sdk, orthanc_plugin.Options(data_dir=str(tmp_path)))
    assert not plugin.receiving()
    for i in range(5):
        plugin._post(b"derived %d" % i)
    plugin._post(b"derived 0")  # held already: no NEW_INSTANCE follows
    time.sleep(0.3)  # their NEW_INSTANCE events have come
    assert (plugin._arrived, plugin._own) == (5, 5)
    assert not plugin.receiving()

    sdk.modality_sends()
    assert plugin.receiving()
    last = []

    def sending():
        for _ in range(8):
            sdk.modality_sends()
            last.append(time.monotonic())
            time.sleep(0.1)

    sender = threading.Thread(target=sending)
    sender.start()
    plugin._yield_to_receiving()
    done = time.monotonic()
    sender.join()
    assert done >= last[-1] + 0.5 * 0.9  # it waited for the last arrival, then the quiet time
    assert not plugin.receiving()

    monkeypatch.setattr(orthanc_plugin, "RECEIVING_WAIT_MAX_S", 0.3)
    stop = threading.Event()

    def never_stops():
        while not stop.is_set():
            sdk.modality_sends()
            time.sleep(0.05)

    sender = threading.Thread(target=never_stops)
    sender.start()
    try:
        time.sleep(0.1)
        waiting = threading.Thread(target=plugin._yield_to_receiving)
        waiting.start()
        waiting.join(10.0)
        assert not waiting.is_alive() and plugin.receiving()  # gave up waiting: not starved
    finally:
        stop.set()
        sender.join()


def test_a_store_orthanc_refuses_is_not_counted_as_dicom_caes_own(tmp_path):
    sdk = ReceivingOrthanc()
    plugin = sdk.plugin = orthanc_plugin.Plugin(sdk, orthanc_plugin.Options(data_dir=str(tmp_path)))

    def refuse(uri, data):
        raise RuntimeError("Orthanc: storage full")

    sdk.RestApiPost = refuse
    try:
        plugin._post(b"derived")
    except RuntimeError:
        pass
    assert plugin._own == 0
    sdk.modality_sends()
    assert plugin.receiving()  # the next arrival from outside is seen
